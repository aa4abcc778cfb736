"""Torch modules: RegionFuse fusion network and the post-registration corrector."""
