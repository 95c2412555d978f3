"""If3D toolkit: data pipeline, 3D render backends, training engine, metrics and plots."""

__version__ = "0.1.0"
