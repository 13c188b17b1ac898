"""Pure-PyTorch references of spoco's kernels: slow, obvious, and the test oracle."""
from __future__ import annotations

import torch


def embedding_affinities(emb: torch.Tensor, offsets, n_attractive: int, delta_d: float) -> torch.Tensor:
    """Eq. 12 affinities of ``emb (D, *spatial)`` as ``(C, *spatial)``.

    ``out[c, p]`` describes the edge ``(p, p + offsets[c])``: ``1 - w`` on the first
    ``n_attractive`` channels, ``w`` on the others, 0 where ``p + offsets[c]`` leaves
    the grid; ``w = 1 - max((2 delta_d - |e_p - e_q|) / (2 delta_d), 0)^2``.
    """
    spatial = emb.shape[1:]
    out = emb.new_zeros((len(offsets),) + tuple(spatial))
    for c, off in enumerate(offsets):
        src, dst = [], []
        for o, n in zip(off, spatial):
            # empty (not negative, which would count from the end) when |o| >= n
            src.append(slice(max(0, -o), max(0, min(n, n - o))))
            dst.append(slice(max(0, o), max(0, min(n, n + o))))
        a = emb[(slice(None), *src)]
        b = emb[(slice(None), *dst)]
        dist = ((a - b) ** 2).sum(0).sqrt()
        t = torch.clamp((2 * delta_d - dist) / (2 * delta_d), min=0) ** 2
        out[(c, *src)] = t if c < n_attractive else 1 - t
    return out
