"""Launch arguments of ``launch/fuse.launch.py`` and how they map to fuse_node's arguments.

Both the launch file and the tests use this module, so the mapping exists
once: :func:`node_arguments` gives the namespace, parameters files,
parameter overrides, remappings and ROS arguments of the node;
:func:`command_line` renders the same as the ``fuse_node --ros-args ...``
command line launch_ros would run. No parameter default is repeated here: the
params file holds them, and empty arguments (``device``) mean "keep the file's
value".

ROS-free (no rclpy import); ``ament_index_python`` is used when present.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ros2_regionfuse.core.paths import REPO_DIR

PACKAGE = 'ros2_regionfuse'
EXECUTABLE = 'fuse_node'
NODE_NAME = 'regionfuse'
#: Node-relative input names (see ros2_regionfuse.ros.node).
THERMAL_IMAGE = 'thermal/image_raw'
RGB_IMAGE = 'rgb/image_raw'
COMPRESSED_SUFFIX = '/compressed'
CAMERA_INFO = 'camera_info'
TRUE_WORDS = ('true', '1', 'yes', 'on')
#: ``dds`` launch argument values (else: a Fast DDS XML profile path).
DDS_HOST = 'host'
DDS_SYSTEM = 'system'
#: RMW implementations that read Fast DDS profiles (the default RMW when unset).
FASTDDS_RMWS = ('', 'rmw_fastrtps_cpp', 'rmw_fastrtps_dynamic_cpp')
LOG_LEVELS = ('debug', 'info', 'warn', 'error', 'fatal')


@dataclass(frozen=True)
class LaunchArgument:
    """One ``DeclareLaunchArgument``: name, default (a string) and description."""

    name: str
    default: str
    description: str


def _repo_or_share(*parts: str) -> str:
    """A file of the package share (installed) or of the source tree (development)."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
        try:
            return str(Path(get_package_share_directory(PACKAGE)).joinpath(*parts))
        except (PackageNotFoundError, OSError):  # not installed, or no AMENT_PREFIX_PATH
            pass
    except ImportError:
        pass
    return str(REPO_DIR.joinpath(*parts))


def default_params_file() -> str:
    """``<share>/ros2_regionfuse/config/fuse.yaml`` (or the source tree's ``config/fuse.yaml``)."""
    return _repo_or_share('config', 'fuse.yaml')


def host_dds_profile() -> str:
    """``<share>/ros2_regionfuse/config/fastdds_loopback.xml`` (or the source tree's copy)."""
    return _repo_or_share('config', 'fastdds_loopback.xml')


def dds_environment(value: str) -> dict[str, str]:
    """Environment variables the ``dds`` launch argument sets for the started processes.

    ``host``: the shipped shared-memory + loopback profile, discovery on this host only
    (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``); ``system``: nothing; else the value is a
    Fast DDS XML profile file.

    Example:
        >>> sorted(dds_environment('host'))
        ['FASTDDS_DEFAULT_PROFILES_FILE', 'ROS_AUTOMATIC_DISCOVERY_RANGE']
        >>> dds_environment('system')
        {}
    """
    v = value.strip()
    if v == DDS_SYSTEM:
        return {}
    if v == DDS_HOST:
        return {'FASTDDS_DEFAULT_PROFILES_FILE': host_dds_profile(),
                'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}
    return {'FASTDDS_DEFAULT_PROFILES_FILE': v}


def rviz_config_file() -> str:
    """``<share>/ros2_regionfuse/config/fuse.rviz`` (or the source tree's copy)."""
    return _repo_or_share('config', 'fuse.rviz')


def launch_arguments() -> tuple[LaunchArgument, ...]:
    """The launch file's arguments with their defaults and descriptions."""
    return (
        LaunchArgument('namespace', '', 'Namespace of the node (its relative topics follow it).'),
        LaunchArgument('params_file', default_params_file(),
                       'Parameters file (all parameters with their defaults: config/fuse.yaml).'),
        LaunchArgument('thermal_topic', THERMAL_IMAGE,
                       'Thermal image topic (sensor_msgs/Image); its camera_info is the sibling '
                       '"camera_info" topic and its compressed stream "<topic>/compressed".'),
        LaunchArgument('rgb_topic', RGB_IMAGE, 'RGB image topic; camera_info and compressed likewise.'),
        LaunchArgument('device', '', 'Inference device auto|cpu|cuda; empty: keep the params file value.'),
        LaunchArgument('use_sim_time', 'false', 'Use /clock (bag playback).'),
        LaunchArgument('log_level', 'info', 'Node log level: ' + '|'.join(LOG_LEVELS) + '.'),
        LaunchArgument('rviz', 'false', 'Also start RViz with config/fuse.rviz.'),
        LaunchArgument('dds', DDS_HOST,
                       f'DDS transports of the started processes: {DDS_HOST} (Fast DDS shared memory with '
                       '32 MiB segments and UDP on loopback, config/fastdds_loopback.xml: 640x480 to 1080p '
                       'at 30 Hz between processes on this host; give the camera drivers and viewers the '
                       f'same), {DDS_SYSTEM} (keep this environment\'s DDS setup: multi-host rigs, '
                       'docs/node.md), or the path of a Fast DDS XML profile.'),
    )


@dataclass
class NodeArguments:
    """Everything launch_ros' ``Node`` action needs (and the equivalent command line).

    Attributes:
        namespace: node namespace ('' for none).
        params_file: parameters file path.
        parameters: single-parameter overrides (applied after ``params_file``).
        remappings: ``(from, to)`` topic remappings.
        ros_arguments: further ``--ros-args`` items (log level).
        rviz: start RViz too.
        environment: variables set for the started processes (``dds`` launch argument).
        dds: the ``dds`` launch argument's value.
    """

    namespace: str
    params_file: str
    parameters: dict[str, object] = field(default_factory=dict)
    remappings: list[tuple[str, str]] = field(default_factory=list)
    ros_arguments: list[str] = field(default_factory=list)
    rviz: bool = False
    environment: dict[str, str] = field(default_factory=dict)
    dds: str = DDS_HOST


def _flag(text: str, name: str) -> bool:
    t = str(text).strip().lower()
    if t in TRUE_WORDS:
        return True
    if t in ('false', '0', 'no', 'off'):
        return False
    raise ValueError(f'launch argument {name}: expected true or false, got {text!r}')


def _sibling(topic: str, name: str) -> str:
    """``/cam/image_raw`` -> ``/cam/<name>``; ``image_raw`` -> ``<name>``."""
    head, _, _ = topic.rstrip('/').rpartition('/')
    return f'{head}/{name}' if head or topic.startswith('/') else name


def camera_remappings(node_image: str, node_info_dir: str, topic: str) -> list[tuple[str, str]]:
    """Remaps of one camera: image, its compressed stream and its camera_info.

    Args:
        node_image: the node's relative image topic (``thermal/image_raw``).
        node_info_dir: its camera prefix (``thermal``).
        topic: the camera's image topic to connect to.

    Example:
        >>> camera_remappings('thermal/image_raw', 'thermal', '/boson/image_raw')[2]
        ('thermal/camera_info', '/boson/camera_info')
    """
    return [(node_image, topic),
            (node_image + COMPRESSED_SUFFIX, topic.rstrip('/') + COMPRESSED_SUFFIX),
            (f'{node_info_dir}/{CAMERA_INFO}', _sibling(topic, CAMERA_INFO))]


def resolve_values(values: Mapping[str, str] | None = None) -> dict[str, str]:
    """Launch argument values with the defaults filled in.

    Raises:
        ValueError: an unknown argument name.
    """
    out = {a.name: a.default for a in launch_arguments()}
    for k, v in (values or {}).items():
        if k not in out:
            raise ValueError(f'unknown launch argument {k!r}; known: {sorted(out)}')
        out[k] = str(v)
    return out


def node_arguments(values: Mapping[str, str] | None = None) -> NodeArguments:
    """Map launch argument values to the node's namespace, parameters, remaps and ROS arguments.

    Raises:
        ValueError: unknown argument, bad boolean or log level.

    Example:
        >>> a = node_arguments({'thermal_topic': '/boson/image_raw', 'device': 'cpu'})
        >>> a.parameters['device'], a.remappings[0]
        ('cpu', ('thermal/image_raw', '/boson/image_raw'))
    """
    v = resolve_values(values)
    level = v['log_level'].strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f'launch argument log_level: {level!r} is not one of {list(LOG_LEVELS)}')
    params: dict[str, object] = {'use_sim_time': _flag(v['use_sim_time'], 'use_sim_time')}
    if v['device'].strip():
        params['device'] = v['device'].strip()
    remaps = (camera_remappings(THERMAL_IMAGE, 'thermal', v['thermal_topic'])
              + camera_remappings(RGB_IMAGE, 'rgb', v['rgb_topic']))
    remaps = [(a, b) for a, b in remaps if a != b]
    return NodeArguments(namespace=v['namespace'].strip(), params_file=v['params_file'],
                         parameters=params, remappings=remaps,
                         ros_arguments=['--log-level', level], rviz=_flag(v['rviz'], 'rviz'),
                         environment=dds_environment(v['dds']), dds=v['dds'].strip())


def package_available(name: str) -> bool:
    """Whether the ROS package ``name`` is installed (ament index; else an executable of that name)."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
        try:
            get_package_prefix(name)
            return True
        except (PackageNotFoundError, ValueError, OSError):
            pass
    except ImportError:
        pass
    import shutil
    return shutil.which(name) is not None


def preflight(args: NodeArguments, package_exists: Callable[[str], bool] = package_available,
              rmw: str | None = None) -> list[str]:
    """Problems that must stop the launch before any process starts (empty: go).

    A missing parameter file would leave the node on its built-in defaults (launch_ros
    only warns), and a missing ``rviz2`` would end the launch after ``fuse_node`` had
    started, leaving it running without its parent. A Fast DDS profile is checked to
    exist, and to be read at all (``rmw``: ``RMW_IMPLEMENTATION``, default from the
    environment).

    Example:
        >>> preflight(node_arguments({'params_file': '/no/such.yaml'}), lambda n: True)
        ["launch argument params_file: '/no/such.yaml' is not a file"]
    """
    problems = []
    if not Path(args.params_file).is_file():
        problems.append(f'launch argument params_file: {args.params_file!r} is not a file')
    if args.rviz and not package_exists('rviz2'):
        problems.append("launch argument rviz:=true, but the package 'rviz2' is not installed "
                        '(install ros-<distro>-rviz2, or launch with rviz:=false)')
    profile = args.environment.get('FASTDDS_DEFAULT_PROFILES_FILE')
    if profile is not None:
        if not Path(profile).is_file():
            problems.append(f'launch argument dds: {profile!r} is not a file (use {DDS_HOST}, {DDS_SYSTEM} '
                            'or the path of a Fast DDS XML profile)')
        impl = (os.environ.get('RMW_IMPLEMENTATION', '') if rmw is None else rmw).strip()
        if impl not in FASTDDS_RMWS:
            problems.append(f'launch argument dds:={args.dds} configures Fast DDS, but '
                            f'RMW_IMPLEMENTATION={impl}; launch with dds:={DDS_SYSTEM} and configure '
                            f'{impl} for large images')
    return problems


def _param_text(value: object) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    return str(value)


def command_line(executable: str, values: Mapping[str, str] | None = None) -> list[str]:
    """The ``fuse_node --ros-args ...`` command equivalent to launching with ``values``.

    Args:
        executable: path of the ``fuse_node`` executable.
        values: launch argument values (defaults for missing ones).

    Example:
        >>> command_line('fuse_node', {'namespace': 'cam', 'params_file': 'f.yaml'})[:8]
        ['fuse_node', '--ros-args', '-r', '__node:=regionfuse', '-r', '__ns:=/cam', '--params-file', 'f.yaml']
    """
    a = node_arguments(values)
    cmd = [executable, '--ros-args', '-r', f'__node:={NODE_NAME}']
    if a.namespace:
        ns = a.namespace if a.namespace.startswith('/') else '/' + a.namespace
        cmd += ['-r', f'__ns:={ns}']
    cmd += ['--params-file', a.params_file]
    for name, value in a.parameters.items():
        cmd += ['-p', f'{name}:={_param_text(value)}']
    for src, dst in a.remappings:
        cmd += ['-r', f'{src}:={dst}']
    return cmd + a.ros_arguments
