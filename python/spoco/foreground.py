"""Foreground from positive-unlabeled labels: a network head that learns which pixels
belong to objects when only some objects are labelled and the background never is.

The head is trained to tell labelled object pixels (s = 1) from unlabeled pixels
(s = 0) with a binary cross-entropy. When the labelled objects are a random subset of
all objects ("selected completely at random", as SPOCO@p draws them), the best such
classifier is ``P(s=1 | x) = c · P(object | x)``, where c is the share of object pixels
that are labelled (Elkan & Noto, KDD 2008). So ``P(s=1 | x) / c`` is the foreground
probability, and c is estimated as the mean of ``P(s=1 | x)`` over labelled pixels:
no class prior has to be known. With dense labels c = 1 and the head is an ordinary
foreground/background classifier.

Background scribbles (``TrainConfig.background_label``): a few strokes painted on the
background give the head true negatives. Then the head is trained on the painted
pixels only, labelled objects against scribbles, each class weighing the same
(:func:`scribble_foreground_loss`), and its output is the foreground probability
itself (c = 1). On boundary-stained EM, where nearly every unlabeled pixel belongs to
an unlabeled cell, this is what separates membranes from cells (the positive-unlabeled
head leaves half of the membrane pixels above 0.5; see the benchmark notes).
Where objects never touch, the unlabeled pixels just outside each labelled object are
background too (``TrainConfig.border_background``): they are painted as scribbles, and
the head learns the objects against their own borders without any stroke.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._labels import BACKGROUND_SCRIBBLE

__all__ = ["BACKGROUND_SCRIBBLE", "labelled_mean_probability", "pu_foreground_loss", "scribble_foreground_loss"]


def pu_foreground_loss(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -1) -> torch.Tensor:
    """Mean binary cross-entropy of ``logits (B, *spatial)`` against "labelled object"
    (``labels > 0``) vs "unlabeled" (``labels == 0``); ``ignore_index`` pixels take no part."""
    if logits.shape != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must have the same shape")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    valid = labels != ignore_index
    target = (labels > 0).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (loss * valid).sum() / valid.sum().clamp_min(1)


def scribble_foreground_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of ``logits (B, *spatial)`` on the painted pixels only:
    labelled objects (``labels > 0``) are foreground, background scribbles
    (``labels == BACKGROUND_SCRIBBLE``) background: the sum of the two classes' mean
    cross-entropies (a batch without one of them has only the other's term), so that a
    few strokes weigh as much as all labelled objects; unlabeled pixels take no part."""
    if logits.shape != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must have the same shape")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    positive, negative = labels > 0, labels == BACKGROUND_SCRIBBLE
    loss = F.binary_cross_entropy_with_logits(logits, positive.to(logits.dtype), reduction="none")
    terms = [(loss * m).sum() / m.sum() for m in (positive, negative) if bool(m.any())]
    return torch.stack(terms).sum() if terms else logits.sum() * 0.0


@torch.no_grad()
def labelled_mean_probability(logits: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Mean ``sigmoid(logits)`` over labelled object pixels (an estimate of c), or None
    when the batch has none."""
    positive = labels > 0
    if not bool(positive.any()):
        return None
    return float(torch.sigmoid(logits.float()[positive]).mean())
