"""Data: synthetic generators (and, later, readers and augmentation)."""
