"""pip-installable, ROS-free part of ros2_regionfuse: library, CLI and node entry points.

The ROS 2 package itself is built with colcon (ament_cmake, see CMakeLists.txt),
which also generates the ``ros2_regionfuse.msg`` interfaces. ``pip install .``
gives the fusion library and the ``regionfuse`` CLI on any Python 3.11 machine.
"""
from setuptools import find_packages, setup

package_name = 'ros2_regionfuse'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(include=[package_name, package_name + '.*']),
    package_data={package_name: ['weights/*.safetensors', 'weights/*.json', 'data/sample_demo/*',
                                'native/*.c']},
    python_requires='>=3.10',
    install_requires=['numpy', 'opencv-python-headless', 'torch', 'safetensors', 'tqdm', 'pyyaml'],
    extras_require={'test': ['pytest', 'pytest-timeout', 'ruff', 'websockets'],
                    'viz': ['foxglove-sdk'],
                    'onnx': ['onnx', 'onnxruntime'],
                    'bag': ['rosbags']},
    zip_safe=True,
    maintainer='ros2_regionfuse developers',
    maintainer_email='regionfuse@example.com',
    description='Thermal + RGB region-adaptive fusion with post-registration for ROS 2.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'regionfuse = ros2_regionfuse.cli.main:main',
            'fuse_node = ros2_regionfuse.ros.node:main',
        ],
    },
)
