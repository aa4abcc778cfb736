"""Torch modules: the RegionFuse fusion network and the post-registration correctors.

Importing the package imports the model files, which register their variants in
:mod:`.registry` (the registry imports no model file).
"""
from . import corrector, fusion_net, reference  # noqa: F401  (variant registration)
