"""Data: synthetic generators, file readers and writers, augmentation and the
training dataset."""
from .synthetic import random_instances, synthetic_embedding_views, synthetic_embeddings, synthetic_images

__all__ = ["random_instances", "synthetic_embedding_views", "synthetic_embeddings", "synthetic_images"]
