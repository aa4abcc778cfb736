"""Model variants by name: ``name -> builder``; shipped weights are named after the variant.

The model files register their variants here (``@register_fusion``, ``@register_corrector``);
the registry imports none of them: the package ``__init__`` imports the model files, so any
import from ``ros2_regionfuse.models`` finds every variant registered.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from torch import nn

from ..core.checks import ConfigError
from ..core.weights import DEPRECATED_NAMES

log = logging.getLogger(__name__)

_FUSION: dict[str, Callable[[], nn.Module]] = {}
_CORRECTOR: dict[str, Callable[[], nn.Module]] = {}

#: the corrector that registers in numpy/OpenCV and fuses again: no network, no weights
REGISTER_REFUSE = 'register_refuse'


def needs_weights(kind: str, variant: str) -> bool:
    """Whether ``variant`` of ``kind`` ('fusion' or 'corrector') loads weights (all but ``register_refuse``).

    Example:
        >>> needs_weights('corrector', 'register_refuse'), needs_weights('corrector', 'corrector_lite')
        (False, True)
    """
    return not (kind == 'corrector' and variant == REGISTER_REFUSE)


def canonical_name(name: str) -> str:
    """The variant ``name`` stands for (a deprecated alias resolved, with a warning).

    Example:
        >>> canonical_name('regionfuse_lite')
        'regionfuse_lite'
    """
    new = DEPRECATED_NAMES.get(name)
    if new is None:
        return name
    log.warning('variant %r is deprecated: use %r (the same model and weights)', name, new)
    return new


def register_fusion(name: str) -> Callable:
    """Decorator: register a fusion model builder under ``name``."""
    def deco(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        _FUSION[name] = fn
        return fn
    return deco


def register_corrector(name: str) -> Callable:
    """Decorator: register a corrector model builder under ``name``."""
    def deco(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        _CORRECTOR[name] = fn
        return fn
    return deco


def build_fusion(name: str) -> nn.Module:
    """Build an untrained fusion model of variant ``name``.

    Raises:
        ConfigError: unknown variant.
    """
    name = canonical_name(name)
    if name not in _FUSION:
        raise ConfigError(f'unknown fusion variant {name!r}; known: {sorted(_FUSION)}')
    return _FUSION[name]()


def build_corrector(name: str) -> nn.Module:
    """Build an untrained corrector of variant ``name``.

    Raises:
        ConfigError: unknown variant.
    """
    name = canonical_name(name)
    if name not in _CORRECTOR:
        raise ConfigError(f'unknown corrector variant {name!r}; known: {sorted(_CORRECTOR)}')
    return _CORRECTOR[name]()


def fusion_variants() -> list[str]:
    """Names of the registered fusion variants."""
    return sorted(_FUSION)


def corrector_variants() -> list[str]:
    """Names of the registered corrector variants."""
    return sorted(_CORRECTOR)
