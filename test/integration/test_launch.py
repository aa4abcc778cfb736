"""launch/fuse.launch.py: its node action (where launch_ros exists) and its command line (here).

launch/launch_ros are not installable on this machine, so the first test is
skipped here; the mapping of launch arguments to node arguments lives in
ros2_regionfuse/ros/launch_args.py, which the launch file calls, and the last
test starts fuse_node with exactly the command line that mapping produces.
"""
from __future__ import annotations

import ast
import importlib.util
import signal
from pathlib import Path

import pytest
import yaml

from ros2_regionfuse.core.config import FusionConfig, NodeConfig, to_dict
from ros2_regionfuse.ros import launch_args as la

FUSION = FusionConfig().variant   # the default fusion variant

REPO = Path(__file__).resolve().parents[2]
LAUNCH_FILE = REPO / 'launch' / 'fuse.launch.py'
VALUES = {'namespace': 'lt', 'thermal_topic': '/boson/image_raw',
          'rgb_topic': '/camera/camera/color/image_raw', 'device': 'cpu', 'use_sim_time': 'false',
          'log_level': 'warn', 'rviz': 'false'}


def test_mapping_of_launch_arguments() -> None:
    a = la.node_arguments(VALUES)
    assert a.namespace == 'lt' and a.params_file == la.default_params_file()
    assert a.parameters == {'use_sim_time': False, 'device': 'cpu'}
    assert dict(a.remappings) == {
        'thermal/image_raw': '/boson/image_raw',
        'thermal/image_raw/compressed': '/boson/image_raw/compressed',
        'thermal/camera_info': '/boson/camera_info',
        'rgb/image_raw': '/camera/camera/color/image_raw',
        'rgb/image_raw/compressed': '/camera/camera/color/image_raw/compressed',
        'rgb/camera_info': '/camera/camera/color/camera_info'}
    assert a.ros_arguments == ['--log-level', 'warn'] and not a.rviz
    d = la.node_arguments({})
    assert d.remappings == [] and 'device' not in d.parameters and d.namespace == ''
    cmd = la.command_line('fuse_node', VALUES)
    assert cmd[:6] == ['fuse_node', '--ros-args', '-r', '__node:=regionfuse', '-r', '__ns:=/lt']
    assert '-p' in cmd and 'device:=cpu' in cmd and 'thermal/camera_info:=/boson/camera_info' in cmd
    # dds: the shipped host profile (loopback discovery) by default, nothing with system, else a file
    assert a.dds == 'host' and a.environment == {'FASTDDS_DEFAULT_PROFILES_FILE': la.host_dds_profile(),
                                                 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}
    assert Path(la.host_dds_profile()).is_file()
    assert la.node_arguments({'dds': 'system'}).environment == {}
    assert la.node_arguments({'dds': '/x/p.xml'}).environment == {'FASTDDS_DEFAULT_PROFILES_FILE': '/x/p.xml'}
    for bad in ({'rviz': 'maybe'}, {'log_level': 'loud'}, {'nope': '1'}):
        with pytest.raises(ValueError):
            la.node_arguments(bad)


def test_launch_files_repeat_no_parameter_default() -> None:
    """Only the params file holds defaults: no config field name/value pair in the launch code."""
    names = set(to_dict(NodeConfig())) - {'device'}
    for path in (LAUNCH_FILE, REPO / 'ros2_regionfuse' / 'ros' / 'launch_args.py'):
        strings = {n.value for n in ast.walk(ast.parse(path.read_text()))
                   if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not names & strings, (path, names & strings)
    assert {a.name: a.default for a in la.launch_arguments()}['device'] == ''
    assert [a.name for a in la.launch_arguments()] == [
        'namespace', 'params_file', 'thermal_topic', 'rgb_topic', 'device', 'use_sim_time',
        'log_level', 'rviz', 'dds']


def test_generate_launch_description() -> None:
    pytest.importorskip('launch_ros', reason='launch_ros is not installable here')
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.launch_context import LaunchContext
    spec = importlib.util.spec_from_file_location('fuse_launch', LAUNCH_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ld = mod.generate_launch_description()
    declared = [e for e in ld.entities if isinstance(e, DeclareLaunchArgument)]
    assert [d.name for d in declared] == [a.name for a in la.launch_arguments()]
    (opaque,) = [e for e in ld.entities if isinstance(e, OpaqueFunction)]
    calls = []
    mod.Node = lambda **kw: calls.append(kw) or kw            # record the Node actions' arguments
    ctx = LaunchContext()
    ctx.launch_configurations.update({a.name: a.default for a in la.launch_arguments()})
    ctx.launch_configurations.update({**VALUES, 'rviz': 'true'})
    opaque.execute(ctx)
    node, rviz = calls
    expect = la.node_arguments(VALUES)
    assert (node['package'], node['executable'], node['name']) == ('ros2_regionfuse', 'fuse_node',
                                                                   'regionfuse')
    assert node['namespace'] == 'lt'
    assert node['parameters'] == [expect.params_file, expect.parameters]
    assert node['remappings'] == expect.remappings and node['ros_arguments'] == expect.ros_arguments
    assert rviz['executable'] == 'rviz2' and rviz['arguments'] == ['-d', la.rviz_config_file()]
    assert node['additional_env'] == rviz['additional_env'] == expect.environment


def test_launch_description_stops_before_any_process_on_a_preflight_problem(tmp_path) -> None:
    """With launch_ros: a mistyped params_file raises in the OpaqueFunction and builds no Node action."""
    pytest.importorskip('launch_ros', reason='launch_ros is not installable here')
    from launch.actions import OpaqueFunction
    from launch.launch_context import LaunchContext
    spec = importlib.util.spec_from_file_location('fuse_launch_fail', LAUNCH_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ld = mod.generate_launch_description()
    (opaque,) = [e for e in ld.entities if isinstance(e, OpaqueFunction)]
    calls = []
    mod.Node = lambda **kw: calls.append(kw) or kw
    ctx = LaunchContext()
    ctx.launch_configurations.update({a.name: a.default for a in la.launch_arguments()})
    ctx.launch_configurations['params_file'] = str(tmp_path / 'typo.yaml')
    with pytest.raises(RuntimeError, match='is not a file'):
        opaque.execute(ctx)
    assert calls == []


def test_launch_command_line_runs_here(tmp_path) -> None:
    """Start fuse_node with the launch file's command line; outputs appear under the namespace.

    The params file (a launch argument) selects compressed input, so the
    ``.../compressed`` remaps of the launch mapping are exercised too.
    """
    pytest.importorskip('rclpy')
    import numpy as np
    import torch
    from _node_harness import RosClient, load_pair, node_executable, start_node, stop_node, thermal_counts
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image
    from std_msgs.msg import Header

    from ros2_regionfuse.core.weights import save_weights
    from ros2_regionfuse.models.registry import build_fusion
    from ros2_regionfuse.ros import msg_convert as mc

    torch.manual_seed(0)
    ckpt = tmp_path / f'{FUSION}.safetensors'
    save_weights(build_fusion(FUSION), ckpt, {'variant': FUSION})
    # params_file launch argument: the shipped file with the test weights (no shipped weights needed)
    params = yaml.safe_load(Path(la.default_params_file()).read_text())
    p = params['/**']['ros__parameters']
    p['fusion']['checkpoint'] = str(ckpt)
    p['corrector']['enabled'] = False
    p['threads'] = 1
    p['input']['transport'] = 'compressed'
    params_file = tmp_path / 'fuse_test.yaml'
    params_file.write_text(yaml.safe_dump(params))
    cmd = la.command_line(node_executable(), {**VALUES, 'params_file': str(params_file)})
    proc = start_node(cmd, tmp_path / 'node.log')
    client = RosClient('launch_client')
    try:
        client.subscribe(Image, '/lt/fused/image', 'image')
        client.subscribe(CameraInfo, '/lt/fused/camera_info', 'info')
        pt = client.publisher(CompressedImage, VALUES['thermal_topic'] + '/compressed')
        pr = client.publisher(CompressedImage, VALUES['rgb_topic'] + '/compressed')
        pi = client.publisher(CameraInfo, '/camera/camera/color/camera_info')
        t8, rgb = load_pair()
        thermal = thermal_counts(t8)
        got = None
        for sec in range(1, 90):                    # bounded: ~45 s at most, usually a few frames
            h = Header(frame_id='color_optical')
            h.stamp.sec = sec
            pi.publish(CameraInfo(header=h, width=rgb.shape[1], height=rgb.shape[0],
                                  k=[100.0, 0, 80.0, 0, 100.0, 60.0, 0, 0, 1.0]))
            pt.publish(mc.array_to_compressed(thermal, 'mono16', 'png', h))        # 16-bit PNG
            pr.publish(mc.array_to_compressed(rgb, 'rgb8', 'jpeg', h))
            got = client.collector.wait(lambda: client.collector.msgs['image'], 0.5)
            if got or proc.poll() is not None:
                break
        assert got, 'no /lt/fused/image: ' + stop_node(proc)[1][-2000:]
        img = got[0]
        assert (img.width, img.height, img.header.frame_id) == (rgb.shape[1], rgb.shape[0], 'color_optical')
        assert np.ptp(mc.image_to_array(img)) > 0
        info = client.collector.wait(lambda: client.collector.msgs['info'], 10.0)
        assert info and info[0].k[0] == 100.0
        names = client.node.get_node_names_and_namespaces()
        assert ('regionfuse', '/lt') in names
    finally:
        client.close()
        rc, log = stop_node(proc, signal.SIGTERM, timeout=30.0)
    assert rc == 0 and 'Traceback' not in log, log[-2000:]


def test_preflight_stops_a_launch_that_would_orphan_the_node_or_ignore_its_parameters(tmp_path) -> None:
    """rviz:=true without rviz2 and a mistyped params_file stop the launch before any process starts."""
    good = tmp_path / 'p.yaml'
    good.write_text('/**:\n  ros__parameters: {}\n')
    ok = la.node_arguments({'params_file': str(good), 'rviz': 'true'})
    assert la.preflight(ok, lambda name: True, rmw='') == []
    missing_rviz = la.preflight(ok, lambda name: name != 'rviz2', rmw='')
    assert len(missing_rviz) == 1 and "'rviz2' is not installed" in missing_rviz[0]
    typo = la.node_arguments({'params_file': str(tmp_path / 'typo.yaml')})
    expected = f"launch argument params_file: '{tmp_path / 'typo.yaml'}' is not a file"
    assert la.preflight(typo, lambda name: True, rmw='') == [expected]
    # the default params file exists (source tree or package share)
    assert la.preflight(la.node_arguments({}), lambda name: True, rmw='') == []
    # dds: a missing profile, or a profile the RMW would not read
    bad_profile = la.preflight(la.node_arguments({'dds': str(tmp_path / 'nope.xml')}), lambda n: True, rmw='')
    assert len(bad_profile) == 1 and 'nope.xml' in bad_profile[0] and 'is not a file' in bad_profile[0]
    cyclone = la.preflight(la.node_arguments({}), lambda n: True, rmw='rmw_cyclonedds_cpp')
    assert len(cyclone) == 1 and 'dds:=system' in cyclone[0]
    assert la.preflight(la.node_arguments({'dds': 'system'}), lambda n: True, rmw='rmw_cyclonedds_cpp') == []
