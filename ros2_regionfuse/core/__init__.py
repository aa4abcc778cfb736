"""ROS-free core: configuration, checks, conversion, pairing, registration, paths; no models."""
