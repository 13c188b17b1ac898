"""The plugin's array side (no napari needed): training pairs from painted labels,
validation crops, and the score that asks only about the painted objects."""
import numpy as np
import pytest

from spoco.napari._data import channels_first, painted_pairs, sparse_scores, validation_crops
from tests._helpers.data import make_discs


def test_sparse_scores_ignore_found_unpainted_objects_but_not_merges():
    _, labels = make_discs((64, 64), 5, seed=3)
    ids = np.unique(labels[labels > 0])
    assert ids.size == 5
    painted = np.where(np.isin(labels, ids[:2]), labels, 0)
    # Finding every object, the unpainted ones included, is perfect on the painted objects.
    assert sparse_scores(painted, labels)["ap50"] == 1.0
    # Finding only the painted ones, too.
    assert sparse_scores(painted, painted)["ap50"] == 1.0
    # Two painted objects merged into one segment: the smaller one is missed.
    merged = np.where(np.isin(labels, ids[:2]), ids[0], labels)
    assert sparse_scores(painted, merged)["ap50"] <= 0.5  # the larger one may still match
    # One segment over all the background and the objects (nothing separated) scores 0.
    assert sparse_scores(painted, np.ones_like(labels))["ap50"] == 0.0


def test_painted_pairs_of_a_stack_for_a_2d_network_are_the_painted_slices():
    image = channels_first(np.random.default_rng(0).random((4, 16, 16)))
    labels = np.zeros((4, 16, 16), np.int32)
    labels[1, 2:5, 2:5] = 1
    labels[3, 8:12, 8:12] = 7
    pairs = painted_pairs(image, labels, 2)
    assert [lab.max() for _, lab in pairs] == [1, 7]
    assert all(img.shape == (1, 16, 16) for img, _ in pairs)
    assert len(painted_pairs(image, labels, 3)) == 1
    with pytest.raises(ValueError, match="no object is painted"):
        painted_pairs(image, np.zeros_like(labels), 3)
    with pytest.raises(ValueError, match="shape"):
        painted_pairs(image, labels[:, :8], 2)


def test_rgb_layers_keep_their_colours_as_channels():
    assert channels_first(np.zeros((8, 9, 3)), rgb=True).shape == (3, 8, 9)
    assert channels_first([np.zeros((8, 9)), np.zeros((4, 5))]).shape == (1, 8, 9)  # multiscale: level 0


def test_validation_crops_hold_the_painted_objects_and_some_context():
    image, labels = make_discs((64, 64), 3, seed=1)
    painted = np.where(labels == 1, 1, 0)
    (crop, crop_labels, (lo, hi)), = validation_crops([(channels_first(image), painted)], (4, 4))
    assert crop_labels.sum() == painted.sum()
    ys, xs = np.nonzero(painted)
    assert crop_labels.shape == (min(ys.max() + 5, 64) - max(ys.min() - 4, 0),
                                 min(xs.max() + 5, 64) - max(xs.min() - 4, 0))
    assert crop.shape == (1,) + crop_labels.shape
    assert lo.shape == hi.shape == (1,)
