"""The inference layer: :class:`~.pipeline.FusionPipeline` on core (preprocessing) and models (runners)."""
