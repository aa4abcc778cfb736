"""ROS 2 adapter: the only sub-package that imports rclpy or ROS message types."""
