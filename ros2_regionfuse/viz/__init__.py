"""Live views of the fusion outside ROS tools (ROS-free; optional dependencies imported on use)."""
