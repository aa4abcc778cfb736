"""ROS parameters of ``fuse_node`` declared from, and read back into, :class:`NodeConfig`.

Every leaf field of :class:`~ros2_regionfuse.core.config.NodeConfig` becomes one
parameter named by its dotted path (``sync.slop``; the ``pipeline`` group has
no prefix: ``device``, ``fusion.checkpoint``). Its descriptor carries the
field's help text, a ``FloatingPointRange``/``IntegerRange`` from ``range``,
``additional_constraints`` (choices, lengths) and ``read_only``. Run-time
changes are validated by :class:`ParameterValidator` (the node's
set-parameters callback) with the same rules as the dataclass
(:func:`~ros2_regionfuse.core.config.validate_value`) plus cross-field checks,
and rejected with the reason.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)

from ..core.align import homography_from_values, load_homography_file
from ..core.checks import ConfigError
from ..core.config import FieldSpec, NodeConfig, set_value
from .param_docs import constraint_text, node_specs

_ROS_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
              float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
              list: ParameterType.PARAMETER_DOUBLE_ARRAY}

#: Extra check run on a candidate config: ``(cfg, changed names) -> reason or None``.
ExtraCheck = Callable[[NodeConfig, set[str]], 'str | None']


def descriptor(spec: FieldSpec) -> ParameterDescriptor:
    """The ROS ParameterDescriptor of one config field.

    Raises:
        TypeError: a field type ROS parameters cannot hold (a programming error).
    """
    if spec.type not in _ROS_TYPES:
        raise TypeError(f'{spec.name}: unsupported parameter type {spec.type.__name__}')
    d = ParameterDescriptor(name=spec.name, type=_ROS_TYPES[spec.type], description=spec.help,
                            additional_constraints=constraint_text(spec), read_only=spec.read_only)
    if spec.range is not None and spec.type is float:
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]),
                                                     to_value=float(spec.range[1]), step=0.0)]
    elif spec.range is not None and spec.type is int:
        d.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]),
                                        step=1)]
    return d


def declare_parameters(node: Any, specs: Iterable[FieldSpec] | None = None) -> dict[str, FieldSpec]:
    """Declare one parameter per config field on ``node`` (an rclpy Node).

    Overrides from ``--params-file``/``-p`` apply here; rclpy raises
    ``InvalidParameterTypeException``/``InvalidParameterValueException`` for a
    wrong type or an out-of-range value.

    Returns:
        ``{name: spec}`` of the declared parameters.
    """
    out: dict[str, FieldSpec] = {}
    for spec in specs if specs is not None else node_specs():
        node.declare_parameter(spec.name, spec.default, descriptor(spec))
        out[spec.name] = spec
    return out


def check_consistency(cfg: NodeConfig) -> None:
    """Cross-field and content checks beyond single-field validation.

    Raises:
        ConfigError: ``diagnostics.error_timeout < diagnostics.stale_timeout``,
            a singular ``align.homography`` or an unreadable ``align.homography_file``.
    """
    d = cfg.diagnostics
    if d.error_timeout < d.stale_timeout:
        raise ConfigError(f'diagnostics.error_timeout ({d.error_timeout}) must be >= '
                          f'diagnostics.stale_timeout ({d.stale_timeout})')
    a = cfg.pipeline.align
    try:
        homography_from_values(a.homography)
    except ConfigError as e:
        raise ConfigError(f'align.homography: {e}') from e
    if a.homography_file:
        load_homography_file(a.homography_file)


def read_parameters(node: Any, specs: dict[str, FieldSpec]) -> NodeConfig:
    """Read the declared parameters back into a fresh, validated :class:`NodeConfig`.

    Raises:
        ConfigError: a value fails validation (the message names the parameter).
    """
    cfg = NodeConfig()
    for name in specs:
        set_value(cfg, name, _plain(node.get_parameter(name).value))
    check_consistency(cfg)
    return cfg


def _plain(value: Any) -> Any:
    """Turn rclpy array values (array.array, numpy) into plain Python lists."""
    if isinstance(value, (str, bytes, bool, int, float)) or value is None:
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    try:
        return list(value)
    except TypeError:
        return value


class ParameterValidator:
    """Validate run-time parameter changes against the live config; apply accepted ones.

    Use :meth:`on_set` as the node's ``add_on_set_parameters_callback`` and
    :meth:`on_post_set` as its ``add_post_set_parameters_callback``.

    Args:
        cfg: the node's live config (mutated in place by :meth:`on_post_set`).
        specs: the declared parameters (others, e.g. ``use_sim_time`` or QoS
            overrides, pass through untouched).
        extra_check: optional node-specific check of the candidate config.
        on_applied: called with the set of changed names after they were applied.
    """

    def __init__(self, cfg: NodeConfig, specs: dict[str, FieldSpec],
                 extra_check: ExtraCheck | None = None,
                 on_applied: Callable[[set[str]], None] | None = None) -> None:
        self.cfg = cfg
        self.specs = specs
        self.extra_check = extra_check
        self.on_applied = on_applied

    def candidate(self, params: Iterable[Any]) -> tuple[NodeConfig, set[str]]:
        """The config that would result from ``params`` (objects with ``name``/``value``).

        Raises:
            ConfigError: a value or the resulting combination is invalid.
        """
        cand = copy.deepcopy(self.cfg)
        changed: set[str] = set()
        for p in params:
            if p.name not in self.specs:
                continue
            set_value(cand, p.name, _plain(p.value))
            changed.add(p.name)
        if changed:
            check_consistency(cand)
        return cand, changed

    def on_set(self, params: list[Any]) -> SetParametersResult:
        """Set-parameters callback: accept, or reject with the reason."""
        try:
            cand, changed = self.candidate(params)
        except ConfigError as e:
            return SetParametersResult(successful=False, reason=str(e))
        if changed and self.extra_check is not None:
            reason = self.extra_check(cand, changed)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def on_post_set(self, params: list[Any]) -> None:
        """Post-set callback: write the accepted values into the live config."""
        changed: set[str] = set()
        for p in params:
            if p.name in self.specs:
                set_value(self.cfg, p.name, _plain(p.value))
                changed.add(p.name)
        if changed and self.on_applied is not None:
            self.on_applied(changed)
