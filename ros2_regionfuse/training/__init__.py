"""Training code for the fusion network and the corrector (no ROS imports)."""
