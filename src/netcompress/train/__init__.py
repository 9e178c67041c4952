"""Training: `fit` (plain or distilled), distillation losses, data-parallel processes."""
