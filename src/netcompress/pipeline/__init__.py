"""Pipelines: a whole experiment from a recipe file, run as resumable stages, and its report."""
