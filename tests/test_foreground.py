"""The positive-unlabeled foreground head: its loss, the estimate of c, and how
prediction and segmentation use it."""
import numpy as np
import pytest
import torch

from spoco.clustering import segment
from spoco.foreground import labelled_mean_probability, pu_foreground_loss


def test_pu_loss_is_bce_of_labelled_vs_unlabeled(rng, seed):
    logits = torch.from_numpy(rng.normal(size=(2, 7, 9)))
    labels = torch.from_numpy(rng.integers(-1, 4, size=(2, 7, 9)))
    loss = pu_foreground_loss(logits, labels, ignore_index=-1)
    x, y = logits.numpy(), labels.numpy()
    keep = y != -1
    p = 1 / (1 + np.exp(-x[keep]))
    s = (y[keep] > 0).astype(float)
    expected = -np.mean(s * np.log(p) + (1 - s) * np.log(1 - p))
    assert float(loss) == pytest.approx(expected, rel=1e-6), seed


def test_pu_loss_gradient_and_errors(rng, seed):
    logits = torch.from_numpy(rng.normal(size=(1, 5, 5))).requires_grad_()
    labels = torch.from_numpy(rng.integers(0, 3, size=(1, 5, 5)))
    torch.autograd.gradcheck(lambda x: pu_foreground_loss(x, labels), (logits,))
    with pytest.raises(ValueError, match="same shape"):
        pu_foreground_loss(logits, labels[:, :4])
    all_ignored = torch.full((1, 5, 5), -1)
    assert float(pu_foreground_loss(logits, all_ignored).detach()) == 0.0


def test_labelled_mean_probability(rng):
    logits = torch.from_numpy(rng.normal(size=(2, 6, 6)))
    labels = torch.zeros(2, 6, 6, dtype=torch.long)
    assert labelled_mean_probability(logits, labels) is None
    labels[0, :2] = 3
    expected = torch.sigmoid(logits[0, :2]).mean()
    assert labelled_mean_probability(logits, labels) == pytest.approx(float(expected))


def test_segment_clusters_only_the_foreground(rng, seed):
    # Two objects with distinct embeddings on a background whose embedding varies wildly:
    # without the mask the background falls apart into many segments, with it they are 0.
    lab = np.zeros((40, 40), int)
    lab[5:15, 5:15], lab[20:35, 22:30] = 1, 2
    emb = rng.normal(scale=5.0, size=(3, 40, 40))
    emb[:, lab == 1], emb[:, lab == 2] = 10.0, -10.0
    prob = np.where(lab > 0, 0.9, 0.1)[None]
    seg = segment(np.concatenate([emb, prob]), foreground=True)
    np.testing.assert_array_equal(seg > 0, lab > 0)
    assert len(np.unique(seg[lab > 0])) == 2, seed
    assert segment(np.concatenate([emb, prob]), foreground=True, foreground_threshold=0.95).max() == 0
    with pytest.raises(ValueError, match="D \\+ 1"):
        segment(prob, foreground=True)


# ---------------------------------------------------------------------------- background scribbles

def test_scribble_loss_is_objects_against_scribbles(rng, seed):
    from spoco.foreground import BACKGROUND_SCRIBBLE, scribble_foreground_loss

    logits = torch.from_numpy(rng.normal(size=(2, 7, 9)))
    labels = torch.from_numpy(rng.integers(-2, 4, size=(2, 7, 9)))  # -2 scribble, -1 ignore, 0 unlabeled
    x, y = logits.numpy(), labels.numpy()
    p = 1 / (1 + np.exp(-x))
    expected = -np.mean(np.log(p[y > 0])) - np.mean(np.log(1 - p[y == BACKGROUND_SCRIBBLE]))
    assert float(scribble_foreground_loss(logits, labels)) == pytest.approx(expected, rel=1e-6), seed
    # unlabeled and ignored pixels take no part, whatever their logits
    other = logits.clone()
    other[(labels == 0) | (labels == -1)] = 50.0
    assert float(scribble_foreground_loss(other, labels)) == pytest.approx(expected, rel=1e-6), seed
    only_objects = labels.clamp_min(0)
    assert float(scribble_foreground_loss(logits, only_objects)) == pytest.approx(-np.mean(np.log(p[y > 0])),
                                                                                   rel=1e-6), seed
    nothing = torch.zeros_like(labels)
    assert float(scribble_foreground_loss(logits.requires_grad_(), nothing)) == 0.0
    torch.autograd.gradcheck(lambda z: scribble_foreground_loss(z, labels), (logits.detach().requires_grad_(),))
    with pytest.raises(ValueError, match="same shape"):
        scribble_foreground_loss(logits, labels[:, :4])
