"""Data: dataset folders (Food-11 and ImageFolder layouts) decoded once, splits in memory, batched augmentation."""
