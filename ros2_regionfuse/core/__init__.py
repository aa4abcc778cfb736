"""ROS-free core: configuration, checks, conversion, pairing and the pipeline."""
