"""Launch fuse_node (and optionally RViz).

    ros2 launch ros2_regionfuse fuse.launch.py thermal_topic:=/boson/image_raw \
        rgb_topic:=/camera/camera/color/image_raw device:=cpu rviz:=true

Arguments (see ``ros2 launch ros2_regionfuse fuse.launch.py --show-args``):
namespace, params_file, thermal_topic, rgb_topic, device, use_sim_time,
log_level, rviz, dds. Their mapping to the node's remaps, parameters and ROS
arguments lives in ros2_regionfuse/ros/launch_args.py (shared with the tests);
parameter defaults live only in the params file (config/fuse.yaml). ``dds`` (default
host) gives the node and RViz the shipped shared-memory DDS profile (docs/node.md).
Uses only launch/launch_ros APIs present on Jazzy and Kilted.
"""
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchContext, LaunchDescription
from ros2_regionfuse.ros.launch_args import (
    EXECUTABLE,
    NODE_NAME,
    PACKAGE,
    launch_arguments,
    node_arguments,
    preflight,
    rviz_config_file,
)


def _actions(context: LaunchContext) -> list:
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in launch_arguments()}
    args = node_arguments(values)
    problems = preflight(args)
    if problems:   # before any process starts: nothing is left running
        raise RuntimeError('; '.join(problems))
    actions = [Node(
        package=PACKAGE, executable=EXECUTABLE, name=NODE_NAME, namespace=args.namespace,
        parameters=[args.params_file, args.parameters], remappings=args.remappings,
        ros_arguments=args.ros_arguments, additional_env=args.environment, output='screen',
        emulate_tty=True)]
    if args.rviz:
        actions.append(Node(
            package='rviz2', executable='rviz2', name='rviz2', namespace=args.namespace,
            arguments=['-d', rviz_config_file()],
            parameters=[{'use_sim_time': args.parameters['use_sim_time']}],
            additional_env=args.environment, output='screen'))
    return actions


def generate_launch_description() -> LaunchDescription:
    declared = [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
                for a in launch_arguments()]
    return LaunchDescription(declared + [OpaqueFunction(function=_actions)])
