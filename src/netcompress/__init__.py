"""netcompress: turn a dataset and a big teacher network into a tiny, fast image classifier."""

__version__ = "0.1.0"
