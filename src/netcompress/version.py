"""The package version, recorded in every model file netcompress writes."""

__version__ = "0.2.0"
