"""The PyTorch backend of :class:`~spoco.loss.SPOCOLoss` (``backend="torch"``; the one
``"auto"`` picks on devices without spoco kernels, e.g. Apple's MPS): the sums of a loss
call from batched, chunked PyTorch operations (:func:`torch_sums`).

Every function works on a whole batch in a *padded per-image cluster layout*:

- ``emb``: pixel embeddings ``(B, D, N)`` (N = number of pixels of one image),
- ``slot``: int64 ``(B, N)``, the cluster slot ``0..C-1`` of each pixel, or ``C`` (the
  "dump" slot) for pixels that belong to no labelled cluster (ignored, unlabeled),
- ``means``/``anchors``: ``(B, C, D)``; slot ``k`` of image ``b`` is one cluster/anchor.

Padded slots (images with fewer than C clusters) are computed and masked by the
caller. The per-anchor reductions over all pixels (:func:`soft_mask_sums`,
:func:`soft_mask_bce_sums`, :func:`consistency_sums`, :func:`unlabeled_push_sums`)
never build an ``(anchors, N)`` tensor larger than :data:`CHUNK_ELEMENTS`; their
backward passes recompute distances chunk by chunk, so memory stays
``O(B N D + chunk)``. They accept a shared :class:`Pixels` (centred embeddings) so
that one loss call prepares the pixels once. The oracle for all of them is
:mod:`spoco.loss.reference`; :mod:`spoco.ops` holds the same reductions as kernels.
"""
from __future__ import annotations

import torch

from ..ops.cluster_slots import cluster_slots_torch
from .terms import Sums

#: Upper bound on the elements of one ``(B, chunk, N)`` anchor x pixel block.
CHUNK_ELEMENTS = 1 << 23


# --------------------------------------------------------------------------- linear in N
def segment_means(emb: torch.Tensor, slot: torch.Tensor, n_slots: int):
    """Mean embedding μ_k and size N_k of every cluster slot.

    Parameters
    ----------
    emb : (B, D, N) float
    slot : (B, N) int64 in ``[0, n_slots]`` (``n_slots`` = no cluster)
    n_slots : int, C

    Returns
    -------
    means : (B, C, D), zero for empty slots
    counts : (B, C) float, N_k (0 for empty slots)
    """
    B, D, N = emb.shape
    sums = emb.new_zeros((B, D, n_slots + 1)).scatter_add(2, slot[:, None, :].expand(B, D, N), emb)
    counts = emb.new_zeros((B, n_slots + 1)).scatter_add_(1, slot, emb.new_ones((B, N)))
    counts = counts[:, :n_slots]
    means = sums[:, :, :n_slots] / counts.clamp(min=1)[:, None, :]
    return means.transpose(1, 2), counts


class _OwnSqDist(torch.autograd.Function):
    """``d_i = ‖e_i − a_slot(i)‖²`` per pixel; the no-cluster slot's anchor is 0."""

    @staticmethod
    def forward(ctx, anchors, emb, slot):
        ctx.save_for_backward(anchors, emb, slot)
        return _own_diff(anchors, emb, slot).square_().sum(1)

    @staticmethod
    def backward(ctx, grad):
        anchors, emb, slot = ctx.saved_tensors
        B, D, N = emb.shape
        g = _own_diff(anchors, emb, slot).mul_(-2 * grad[:, None, :])  # ∂L/∂e_i = 2 g_i (e_i − a_slot(i))
        grad_a = None
        if ctx.needs_input_grad[0]:
            sums = g.new_zeros((B, D, anchors.shape[1] + 1)).scatter_add_(2, slot[:, None, :].expand(B, D, N), g)
            grad_a = -sums[:, :, :-1].transpose(1, 2)
        return grad_a, g, None


def _own_diff(anchors, emb, slot):
    """``a_slot(i) − e_i`` as a new ``(B, D, N)`` tensor."""
    B, D, N = emb.shape
    padded = torch.cat([anchors.detach(), anchors.new_zeros((B, 1, D))], 1).transpose(1, 2)  # (B, D, C + 1)
    return padded.gather(2, slot[:, None, :].expand(B, D, N)).sub_(emb.detach())


def own_sq_dist(anchors: torch.Tensor, emb: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """Squared distance of every pixel to the anchor (or mean) of its own cluster slot.

    Parameters
    ----------
    anchors : (B, C, D); emb : (B, D, N); slot : (B, N) in ``[0, C]``

    Returns
    -------
    (B, N) ``‖e_i − a_slot(i)‖²`` (distance to 0 for slot C).
    """
    return _OwnSqDist.apply(anchors, emb, slot)


def pull_per_instance(emb: torch.Tensor, means: torch.Tensor, slot: torch.Tensor, delta_v: float) -> torch.Tensor:
    """Pull (Eq. 1) summed per cluster: ``Σ_{i ∈ k} [‖μ_k − e_i‖ − δ_v]₊²``.

    Parameters
    ----------
    emb : (B, D, N); means : (B, C, D); slot : (B, N) in ``[0, C]``

    Returns
    -------
    (B, C) sums (divide by N_k for the per-cluster mean).
    """
    C = means.shape[1]
    d = own_sq_dist(means, emb, slot)
    far = d > delta_v * delta_v  # the hinge is active (and the square root differentiable)
    hinge = torch.where(far, torch.where(far, d, 1).sqrt() - delta_v, 0).square()
    return d.new_zeros((emb.shape[0], C + 1)).scatter_add(1, slot, hinge)[:, :C]


# --------------------------------------------------------------- anchor x pixel reductions
class Pixels:
    """Pixel embeddings prepared for chunked squared distances ``d_ki = ‖e_i − a_k‖²``.

    Embeddings are centred on the per-image mean pixel (a constant, so distances and
    gradients are unchanged; it keeps the expansion ``‖a‖² + ‖e‖² − 2 a·e`` accurate)
    and stored augmented as ``[e; ‖e‖²; 1]`` so that one batched matrix product with
    ``[−2a, 1, ‖a‖²]`` yields every distance of a chunk. Build it once per loss call
    and pass it as ``pixels=`` to share it between terms; it carries no gradient.
    """

    def __init__(self, emb: torch.Tensor):
        emb = emb.detach()
        B, D, N = emb.shape
        self.center = emb.mean(2, keepdim=True)  # (B, D, 1)
        self.aug = emb.new_empty((B, D + 2, N))
        e = torch.sub(emb, self.center, out=self.aug[:, :D])
        torch.sum(e.square(), 1, out=self.aug[:, D])
        self.aug[:, D + 1] = 1
        self.e = self.aug[:, :D]  # (B, D, N) view
        self.step = max(1, CHUNK_ELEMENTS // max(1, B * N))

    def anchors(self, anchors: torch.Tensor) -> torch.Tensor:
        """Centred anchors ``a (B, K, D)`` (detached)."""
        return anchors.detach() - self.center.transpose(1, 2)

    def ranges(self, K: int):
        return [(k0, min(K, k0 + self.step)) for k0 in range(0, K, self.step)]

    def sq_dist(self, a: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """``scale · d`` of shape ``(B, k, N)`` for centred anchors ``a (B, k, D)``."""
        a_aug = torch.cat([a * (-2 * scale), a.new_full(a.shape[:2] + (1,), scale),
                           a.square().sum(2, keepdim=True) * scale], 2)
        d = torch.bmm(a_aug, self.aug)
        return d.clamp_(min=0) if scale > 0 else d.clamp_(max=0)


def _wsum(x: torch.Tensor, w) -> torch.Tensor:
    """``Σ_i w_i x_ki`` for ``x (B, k, N)``, ``w (B, N)`` or None (all ones)."""
    return x.sum(2) if w is None else torch.bmm(x, w[:, :, None])[:, :, 0]


def _wmul(x: torch.Tensor, w) -> torch.Tensor:
    return x if w is None else x.mul_(w[:, None, :])


class _AnchorPixelSums(torch.autograd.Function):
    """Per-anchor sums over pixels of functions of d_ki = ‖e_i − a_k‖², chunked over anchors.

    ``term.values(x, k0, k1)`` returns the sums of one chunk and ``term.coef(x, k0, k1,
    grads)`` the derivative ``c_ki = ∂L/∂d_ki``, both from ``x = term.scale · d``; then
    ``∂L/∂e_i = 2 Σ_k c_ki (e_i − a_k)`` and ``∂L/∂a_k = −2 Σ_i c_ki (e_i − a_k)``,
    accumulated with matrix products.
    """

    @staticmethod
    def forward(ctx, anchors, emb, term, pixels):
        pixels = pixels if pixels is not None else Pixels(emb)
        ctx.term, ctx.pixels = term, pixels
        ctx.save_for_backward(anchors)
        a = pixels.anchors(anchors)
        out = emb.new_zeros((term.n_out,) + tuple(anchors.shape[:2]))
        for k0, k1 in pixels.ranges(a.shape[1]):
            out[:, :, k0:k1] = torch.stack(term.values(pixels.sq_dist(a[:, k0:k1], term.scale), k0, k1))
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (anchors,) = ctx.saved_tensors
        term, px = ctx.term, ctx.pixels
        a = px.anchors(anchors)
        need_a, need_e = ctx.needs_input_grad[:2]
        grad_a = torch.empty_like(anchors) if need_a else None
        c_pix = px.e.new_zeros((px.e.shape[0], px.e.shape[2]))  # Σ_k c_ki
        c_a = (torch.empty_like if a.shape[1] else torch.zeros_like)(px.e) if need_e else None  # Σ_k c_ki a_k
        for k0, k1 in px.ranges(a.shape[1]):
            ak = a[:, k0:k1]
            c = term.coef(px.sq_dist(ak, term.scale), k0, k1, grad_out[:, :, k0:k1])  # (B, k, N)
            if need_e:
                c_pix += c.sum(1)
                c_a.baddbmm_(ak.transpose(1, 2), c, beta=1 if k0 else 0)
            if need_a:
                grad_a[:, k0:k1] = torch.baddbmm(ak * c.sum(2, keepdim=True), c, px.e.transpose(1, 2), alpha=-1).mul_(2)
        grad_e = c_a.neg_().addcmul_(px.e, c_pix[:, None, :]).mul_(2) if need_e else None
        return grad_a, grad_e, None, None


class _KernelSquares:
    """``Σ_i w_i S_k(i)²`` with ``S = exp(−d/2σ²)``, i.e. ``Σ_i w_i exp(−d_ki/σ²)``."""
    n_out = 1

    def __init__(self, weight, sigma2):
        self.w, self.scale = weight, -1.0 / sigma2

    def values(self, x, k0, k1):
        return (_wsum(x.exp_(), self.w),)

    def coef(self, x, k0, k1, grads):
        return _wmul(x.exp_(), self.w).mul_(grads[0][:, :, None] * self.scale)


def soft_mask_sums(anchors, emb, slot, weight, sigma2: float, *, pixels: Pixels | None = None):
    """Dice sums of the soft masks S_k (Eq. 3) against the object masks I_k (Eq. 4).

    Parameters
    ----------
    anchors : (B, C, D) anchor embeddings a_k (anchor k belongs to cluster slot k)
    emb : (B, D, N) pixel embeddings e_i
    slot : (B, N) int64 cluster slot of each pixel (C = none)
    weight : (B, N) float, 1 for pixels that count, 0 for ignored ones; None = all count
    sigma2 : σ² of the kernel ``S_k(i) = exp(−‖e_i − a_k‖² / 2σ²)``
    pixels : optional shared :class:`Pixels` of ``emb``

    Returns
    -------
    inter : (B, C) ``Σ_i w_i S_k(i) I_k(i)`` (only the pixels of object k: linear cost)
    sq : (B, C) ``Σ_i w_i S_k(i)²`` (all pixels: chunked)
    """
    C = anchors.shape[1]
    s_own = torch.exp(own_sq_dist(anchors, emb, slot) * (-0.5 / sigma2))
    if weight is not None:
        s_own = s_own * weight
    inter = s_own.new_zeros((emb.shape[0], C + 1)).scatter_add(1, slot, s_own)[:, :C]
    sq = _AnchorPixelSums.apply(anchors, emb, _KernelSquares(weight, sigma2), pixels)[0]
    return inter, sq


class _SoftMaskBCE:
    n_out = 1

    def __init__(self, slot, weight, sigma2):
        self.slot, self.w, self.scale = slot, weight, 0.5 / sigma2

    def _parts(self, x, k0, k1):  # x = −log S
        inside = self.slot[:, None, :] == torch.arange(k0, k1, device=x.device)[None, :, None]
        return x, inside, -torch.log(-torch.expm1(-x))  # −log(1 − S)

    def values(self, x, k0, k1):
        x, inside, nlog_out = self._parts(x, k0, k1)
        return (_wsum(torch.where(inside, x, nlog_out).clamp_(max=100), self.w),)  # logs clamped at −100

    def coef(self, x, k0, k1, grads):
        x, inside, nlog_out = self._parts(x, k0, k1)
        d_in = (x < 100).to(x.dtype).mul_(self.scale)
        live = nlog_out < 100
        d_out = torch.where(live, -self.scale / torch.where(live, torch.expm1(x), 1), 0.0)
        return _wmul(torch.where(inside, d_in, d_out), self.w).mul_(grads[0][:, :, None])


def soft_mask_bce_sums(anchors, emb, slot, weight, sigma2: float, *, pixels: Pixels | None = None):
    """Binary cross-entropy of S_k against I_k summed over pixels (the BCE instance term).

    Same arguments as :func:`soft_mask_sums`; returns ``(B, C)``
    ``Σ_i w_i BCE(S_k(i), I_k(i))`` with logarithms clamped at −100 (as ``torch.nn.BCELoss``;
    the gradient is exact, and 0 where a logarithm is clamped).
    """
    return _AnchorPixelSums.apply(anchors, emb, _SoftMaskBCE(slot, weight, sigma2), pixels)[0]


class _Consistency:
    n_out = 3

    def __init__(self, pixels_g, anchors_g, weight, sigma2):
        self.px_g, self.w, self.scale = pixels_g, weight, -0.5 / sigma2
        self.a_g = pixels_g.anchors(anchors_g)

    def _masks(self, x, k0, k1):
        return x.exp_(), self.px_g.sq_dist(self.a_g[:, k0:k1], self.scale).exp_()  # S^f, S^g

    def values(self, x, k0, k1):
        sf, sg = self._masks(x, k0, k1)
        return _wsum(sf * sg, self.w), _wsum(sf * sf, self.w), _wsum(sg.square_(), self.w)

    def coef(self, x, k0, k1, grads):
        sf, sg = self._masks(x, k0, k1)
        dS = sg.mul_(grads[0][:, :, None]).addcmul_(sf, 2 * grads[1][:, :, None])  # ∂L/∂S^f
        return _wmul(dS.mul_(sf).mul_(self.scale), self.w)


def consistency_sums(anchors_f, emb_f, anchors_g, emb_g, weight, sigma2: float, *, pixels: Pixels | None = None,
                     pixels_g: Pixels | None = None):
    """Dice sums between the soft masks S^f_k and S^g_k of the consistency term (Eq. 7).

    Parameters
    ----------
    anchors_f, anchors_g : (B, K, D) anchor embeddings a^f_k, a^g_k (same pixel in f and g)
    emb_f, emb_g : (B, D, N) embeddings of f and g; g is treated as a constant
    weight : (B, N) float pixel weights (0 = ignored) or None
    pixels, pixels_g : optional shared :class:`Pixels` of ``emb_f`` and ``emb_g``

    Returns
    -------
    cross : (B, K) ``Σ_i w_i S^f_k(i) S^g_k(i)``
    sq_f : (B, K) ``Σ_i w_i S^f_k(i)²``
    sq_g : (B, K) ``Σ_i w_i S^g_k(i)²`` (no gradient)
    """
    term = _Consistency(pixels_g if pixels_g is not None else Pixels(emb_g), anchors_g, weight, sigma2)
    out = _AnchorPixelSums.apply(anchors_f, emb_f, term, pixels)
    return out[0], out[1], out[2].detach()


class _UnlabeledPush:
    n_out = 1

    scale = 1.0

    def __init__(self, unlabeled, delta_d):
        self.u, self.delta_d = unlabeled, delta_d

    def values(self, d, k0, k1):
        return (_wsum(d.sqrt_().neg_().add_(self.delta_d).clamp_(min=0).square_(), self.u),)

    def coef(self, d, k0, k1, grads):
        at_zero = d == 0
        dd = d.sqrt_().reciprocal_().mul_(-self.delta_d).add_(1).clamp_(max=0)  # ∂[δ_d − r]₊²/∂(r²) = 1 − δ_d/r
        return _wmul(dd.masked_fill_(at_zero, 0), self.u).mul_(grads[0][:, :, None])


def unlabeled_push_sums(means, emb, unlabeled, delta_d: float, *, pixels: Pixels | None = None):
    """Unlabeled push (Eq. 6) summed over unlabeled pixels: ``Σ_{i∈U} [δ_d − ‖μ_k − e_i‖]₊²``.

    Parameters
    ----------
    means : (B, C, D) cluster means μ_k
    emb : (B, D, N)
    unlabeled : (B, N) float, 1 on the unlabeled region U
    pixels : optional shared :class:`Pixels` of ``emb``

    Returns
    -------
    (B, C) sums (divide by N_U for the per-object mean).
    """
    return _AnchorPixelSums.apply(means, emb, _UnlabeledPush(unlabeled, delta_d), pixels)[0]


@torch.no_grad()
def draw_consistency_anchors(emb_f: torch.Tensor, emb_g: torch.Tensor, unlabeled: torch.Tensor, keys: torch.Tensor,
                             max_anchors: int, delta_v: float, coverage_stop: float, *, pixels: Pixels | None = None,
                             pixels_g: Pixels | None = None):
    """The anchors of Eq. 7 (the rule of :mod:`spoco.ops.consistency_anchors`) with torch
    operations: ``pix (B, K)`` int64 and ``valid (B, K)`` bool (a prefix of each row) for
    ``emb_f, emb_g (B, D, N)``, ``unlabeled (B, N)`` bool and ``keys (B, N)`` float64.
    Distances by the chunked expansion of :class:`Pixels` (not bit-exact at the δ_v edge)."""
    B, D, N = emb_f.shape
    px_f = pixels if pixels is not None else Pixels(emb_f)
    px_g = pixels_g if pixels_g is not None else Pixels(emb_g)
    free = torch.where(unlabeled, keys, -1.0)  # keys of uncovered pixels, −1 once covered
    thr = coverage_stop * unlabeled.sum(1).to(torch.float64)
    done = torch.zeros(B, dtype=torch.bool, device=emb_f.device)
    pix = torch.zeros((B, max_anchors), dtype=torch.int64, device=emb_f.device)
    valid = torch.zeros((B, max_anchors), dtype=torch.bool, device=emb_f.device)
    r2 = delta_v * delta_v

    def near(px, p):
        a = px.e.gather(2, p[:, None, None].expand(B, D, 1)).transpose(1, 2)  # (B, 1, D)
        return px.sq_dist(a)[:, 0] <= r2

    for k in range(max_anchors):
        left = (free >= 0).sum(1)
        done |= (left < thr) | (left == 0)
        p = free.argmax(1)
        pix[:, k] = p
        valid[:, k] = ~done
        free.masked_fill_((near(px_f, p) | near(px_g, p)) & ~done[:, None], -1.0)
    return pix, valid


def torch_sums(f: torch.Tensor, target: torch.Tensor, g: torch.Tensor | None, keys: torch.Tensor, *, sparse: bool,
               ignore_index: int, anchor: str, instance_loss: str, sigma2: float, delta_v: float, delta_d: float,
               max_anchors: int, coverage_stop: float) -> Sums:
    """:class:`~.terms.Sums` of a loss call (arguments as :func:`.fused_sums.fused_sums`),
    batched over images, clusters and anchors. Clusters are relabelled into per-image slots
    by :func:`spoco.ops.cluster_slots.cluster_slots_torch` (the host waits for C); drawing
    the consistency anchors waits once more (K)."""
    B, D = f.shape[:2]
    N = target[0].numel()
    emb = f.reshape(B, D, N)
    lab = target.reshape(B, N)
    emb_g = g.reshape(B, D, N) if g is not None else None
    slot, labels, inst_pix = cluster_slots_torch(lab, emb.detach(), emb_g, ignore_index, sparse,
                                                 keys if anchor == "random" else None)
    C = labels.shape[1]
    counted = slot >= 0
    slot = torch.where(counted, slot, C)  # ignored pixels: in no cluster, with weight 0
    weight = counted.to(f.dtype) if not bool(counted.all()) else None
    unlabeled = counted & (lab == 0) if sparse else torch.zeros_like(counted)
    pixels = Pixels(emb)
    means, counts = segment_means(emb, slot, C)
    pull = pull_per_instance(emb, means, slot, delta_v)
    anchors = means if anchor == "mean" else emb.gather(2, inst_pix[:, None, :].expand(B, D, C)).transpose(1, 2)
    if instance_loss == "bce":
        inst = (soft_mask_bce_sums(anchors, emb, slot, weight, sigma2, pixels=pixels),)
    else:
        inst = soft_mask_sums(anchors, emb, slot, weight, sigma2, pixels=pixels)
    n_u = unlabeled.sum(1) if sparse else None
    upush = unlabeled_push_sums(means, emb, unlabeled.to(f.dtype), delta_d, pixels=pixels) if sparse else None
    cons = cons_ok = None
    if emb_g is not None:
        pixels_g = Pixels(emb_g)
        cons_pix, cons_ok = draw_consistency_anchors(emb.detach(), emb_g, unlabeled, keys, max_anchors, delta_v,
                                                     coverage_stop, pixels=pixels, pixels_g=pixels_g)
        K = int(cons_ok.sum(1).max())  # the host waits for the anchors drawn
        if K:
            cons_pix, cons_ok = cons_pix[:, :K], cons_ok[:, :K]
            idx = cons_pix[:, None, :].expand(B, D, K)
            cons = consistency_sums(emb.gather(2, idx).transpose(1, 2), emb, emb_g.gather(2, idx).transpose(1, 2),
                                    emb_g, weight, sigma2, pixels=pixels, pixels_g=pixels_g)
    return Sums(labels=labels, means=means, counts=counts, pull=pull, inst=inst, n_counted=counted.sum(1),
                upush=upush, n_unlabeled=n_u, cons=cons, cons_ok=cons_ok)
