"""``spoco::consistency_anchors``: the coverage-driven anchors of the consistency term
(Eq. 7) in the unlabeled region, drawn without host synchronisation.

Rule (the oracle: :func:`spoco.loss.reference.consistency_anchors`): pixel i is
*covered* by anchor p once ``‖e^f_i − e^f_p‖ ≤ δ_v`` or ``‖e^g_i − e^g_p‖ ≤ δ_v``; each
next anchor is the uncovered unlabeled pixel of largest key (a uniform draw; ties: the
lowest index); an image stops once fewer than ``coverage_stop · |U|`` of its unlabeled
pixels are uncovered (or none is), or after ``max_anchors``. CPU:
``spoco._core.loss_consistency_anchors``; CUDA: ``spoco._cuda.loss_consistency_anchors``.
"""
from __future__ import annotations

import torch

from ._kernel import check_dims, check_emb, check_like, launch


@torch.library.custom_op("spoco::consistency_anchors", mutates_args=())
def consistency_anchors(emb_f: torch.Tensor, emb_g: torch.Tensor, unlabeled: torch.Tensor, keys: torch.Tensor,
                        max_anchors: int, delta_v: float, coverage_stop: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchors of Eq. 7 for ``emb_f, emb_g (B, D, N)``, ``unlabeled (B, N)`` bool and
    ``keys (B, N)`` float64 uniform keys: ``pix (B, K)`` int64 and ``valid (B, K)`` bool
    (a prefix of each row), ``K = max_anchors``. Exact squared distances."""
    check_emb("emb_f", emb_f)
    B, D, N = check_dims(emb_f)
    check_like("emb_g", emb_g, (B, D, N), emb_f.dtype, emb_f.device)
    check_like("unlabeled", unlabeled, (B, N), torch.bool, emb_f.device)
    check_like("keys", keys, (B, N), torch.float64, emb_f.device)
    if max_anchors < 1:
        raise ValueError(f"max_anchors must be >= 1, got {max_anchors}")
    emb_f, emb_g, unlabeled, keys = (x.detach().contiguous() for x in (emb_f, emb_g, unlabeled, keys))
    pix = torch.zeros((B, max_anchors), dtype=torch.int64, device=emb_f.device)
    valid = torch.zeros((B, max_anchors), dtype=torch.bool, device=emb_f.device)
    launch("consistency_anchors", emb_f, scratch_dims=("consistency_anchors", B, D, N, max_anchors), emb=emb_f,
           emb_g=emb_g, unlabeled=unlabeled, keys=keys, B=B, D=D, N=N, K=max_anchors, delta_v=float(delta_v),
           coverage_stop=float(coverage_stop), pix=pix, valid=valid)
    return pix, valid


@consistency_anchors.register_fake
def _(emb_f, emb_g, unlabeled, keys, max_anchors, delta_v, coverage_stop):
    B = emb_f.shape[0]
    return (emb_f.new_empty((B, max_anchors), dtype=torch.int64),
            emb_f.new_empty((B, max_anchors), dtype=torch.bool))
