"""Subcommands of the training pipeline (``amyloidkd train|evaluate|demo|cv``)."""
