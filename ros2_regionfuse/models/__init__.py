"""Torch modules: the RegionFuse fusion network, the post-registration correctors, their runners.

Importing the package imports the model files, which register their variants in
:mod:`.registry` (the registry imports no model file).
"""
from . import corrector, fusion_net, reference  # noqa: F401  (variant registration)
