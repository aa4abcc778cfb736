"""Command-line tools (console script ``regionfuse``)."""
