"""Data: synthetic generators, file readers and writers, augmentation and the
training dataset."""
from . import io, sampling
from .augment import GeometricAugment, PhotometricAugment
from .normalize import normalize_image, percentile_range
from .datasets import InstanceDataset
from .io import list_pairs, open_array, read_array, write_array
from .synthetic import random_instances, synthetic_embedding_views, synthetic_embeddings, synthetic_images

__all__ = ["GeometricAugment", "InstanceDataset", "PhotometricAugment", "io", "list_pairs", "normalize_image", "percentile_range",
           "open_array", "random_instances", "read_array", "synthetic_embedding_views", "synthetic_embeddings",
           "synthetic_images", "write_array"]
