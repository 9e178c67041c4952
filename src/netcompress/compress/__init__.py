"""Compression: structured pruning, low-rank factorization and quantization for storage."""
