"""Measurement: accuracy on a split, parameters, MACs, bytes and latency."""
