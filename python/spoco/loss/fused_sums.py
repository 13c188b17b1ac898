"""The fused backend of :class:`~spoco.loss.SPOCOLoss`: the sums of a loss call from three
custom ops (:mod:`spoco.ops`), memory ``O(B·N·D + B·K·D)``, one host synchronisation,
traceable by ``torch.compile(fullgraph=True)``.

``cluster_slots`` relabels the clusters, draws the random instance anchors and checks the
inputs (the one host wait: C); ``consistency_anchors`` draws the Eq. 7 anchors (all
``max_anchors`` slots, with a per-image count of the valid ones, so no shape depends on
the anchors drawn); ``pixel_terms`` computes every per-pixel sum and, in the backward, the
one gradient of f. The BCE instance loss has no kernel: its sums come from
:func:`.torch_sums.soft_mask_bce_sums`.
"""
from __future__ import annotations

import torch

from ..ops import cluster_slots, consistency_anchors, pixel_terms
from .terms import Sums
from .torch_sums import soft_mask_bce_sums


def fused_sums(f: torch.Tensor, target: torch.Tensor, g: torch.Tensor | None, keys: torch.Tensor, *, sparse: bool,
               ignore_index: int, anchor: str, instance_loss: str, sigma2: float, delta_v: float, delta_d: float,
               max_anchors: int, coverage_stop: float) -> Sums:
    """:class:`~.terms.Sums` of ``f, g (B, D, *spatial)`` float32/64 and ``target (B, *spatial)``
    int64, with anchors drawn from ``keys (B, N)`` float64."""
    B, D = f.shape[:2]
    N = target[0].numel()
    emb = f.reshape(B, D, N)
    lab = target.reshape(B, N)
    emb_g = g.reshape(B, D, N) if g is not None else None
    random = anchor == "random"
    slot, labels, inst_pix = cluster_slots(lab, emb.detach(), emb_g, ignore_index, sparse, keys if random else None)
    C = labels.shape[1]
    cons_pix = cons_ok = n_cons = n_u = None
    if sparse:
        n_u = (slot == C).sum(1)
        if emb_g is not None:
            cons_pix, cons_ok = consistency_anchors(emb.detach(), emb_g, slot == C, keys, max_anchors, delta_v,
                                                    coverage_stop)
            n_cons = cons_ok.sum(1)
    means, counts, pull, inst, upush, cons, _ = pixel_terms(
        emb.contiguous(), slot, C, inst_pix if random else None, sparse, cons_pix,
        emb_g.contiguous() if emb_g is not None else None, n_cons, 0.5 / sigma2, delta_v, delta_d)
    n_counted = None
    if instance_loss == "bce":
        counted = slot >= 0
        n_counted = counted.sum(1)
        anchors = means if not random else emb.gather(2, inst_pix[:, None, :].expand(B, D, C)).transpose(1, 2)
        inst = (soft_mask_bce_sums(anchors, emb, slot, counted.to(f.dtype), sigma2),)
    else:
        inst = (inst[0], inst[1])
    return Sums(labels=labels, means=means, counts=counts, pull=pull, inst=inst, n_counted=n_counted,
                upush=upush[0] if sparse else None, n_unlabeled=n_u,
                cons=(cons[0], cons[1], cons[2].detach()) if emb_g is not None else None, cons_ok=cons_ok)
