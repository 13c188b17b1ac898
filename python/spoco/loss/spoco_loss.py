"""``spoco.SPOCOLoss``: the SPOCO training objective (Sec. 3.1–3.2, Eq. 1–8).

Which code runs: the inputs are checked here; a backend reduces the pixels into sums
(:mod:`.fused_sums`: the kernels of :mod:`spoco.ops`; :mod:`.torch_sums`: PyTorch); the
one assembly :func:`.terms.assemble` turns the sums into the terms. ``backend="reference"``
runs the loop oracle :func:`spoco.loss.reference.spoco_loss` instead.
"""
from __future__ import annotations

import numbers

import torch
from torch import nn

from .._cuda_loader import has_cuda_kernels
from ..ops.cluster_slots import raise_on_checks
from . import reference
from .fused_sums import fused_sums
from .terms import TERMS, assemble, kernel_sigma2
from .torch_sums import torch_sums

_BACKENDS = ("auto", "fused", "torch", "reference")


class SPOCOLoss(nn.Module):
    r"""SPOCO loss: pull, push, regularizer and instance term, plus unlabeled push and
    consistency in the sparse (positive-unlabeled) setting.

    ``total = α·pull + β·push + γ_reg·reg + λ·instance + γ·unlabeled_push + δ·consistency``
    (Eq. 5, 8). Per image, with C labelled clusters of mean f-embedding μ_k and size N_k:

    - pull (Eq. 1): mean over clusters of mean over their pixels of ``[‖μ_k − e_i‖ − δ_v]₊²``;
    - push (Eq. 2): ``Σ_{k≠l} [2δ_d − ‖μ_k − μ_l‖]₊² / (C(C−1))``;
    - reg: mean ``‖μ_k‖``;
    - instance (Eq. 3–4): soft mask ``S_k(i) = exp(−‖e_i − a_k‖²/2σ²)`` over all counted
      pixels of the image, ``σ² = −δ_v²/(2 ln t)``, anchor ``a_k`` the f-embedding of a
      uniformly drawn pixel of object k (``anchor="random"``) or μ_k (``"mean"``); Dice loss
      ``1 − 2ΣS·I/(ΣS² + ΣI²)`` averaged over objects (``dice="per_object"``) or one
      Dice over all objects of the image (``"pooled"``), or ``instance_loss="bce"``:
      mean binary cross-entropy of S_k against I_k;
    - unlabeled push (Eq. 6, sparse): mean over objects of mean over unlabeled pixels of
      ``[δ_d − ‖μ_k − e_i‖]₊²``;
    - consistency (Eq. 7, sparse, needs ``g``): up to K anchors from the unlabeled region,
      each uniform among the pixels not yet covered (within δ_v of an earlier anchor in f
      **or** in g), stopping once fewer than ``coverage_stop`` of the unlabeled pixels are
      uncovered; mean over anchors of Dice(S^f, S^g) (or pooled); g is a constant.

    Modes: dense (``sparse=False``): label 0 is background, an ordinary cluster for pull,
    push and reg but without an instance term. Sparse: label 0 is *unlabeled* and forms
    no cluster; it enters only as negatives of the soft masks, the unlabeled push and the
    consistency term. Pixels equal to ``ignore_index`` take part in nothing.

    Batch reduction: each term is the mean over the images in which it *exists*, and 0
    when it exists in none. pull and reg exist with ≥ 1 cluster, push with ≥ 2, instance
    with ≥ 1 object (label > 0), unlabeled push with ≥ 1 object and ≥ 1 unlabeled pixel,
    consistency with ≥ 1 unlabeled pixel.

    Parameters
    ----------
    sparse : bool
        Positive-unlabeled mode (SPOCO@p); label 0 = unlabeled.
    ignore_index : int
        Label of pixels excluded from every term.
    delta_v, delta_d : float
        Pull margin δ_v and push margin δ_d; δ_v with ``kernel_threshold`` must give a
        kernel width σ² within float32's range (default threshold: δ_v in about [1e-19, 4e18]).
    kernel_threshold : float
        t in (0, 1): the kernel value at distance δ_v.
    pull_weight, push_weight, reg_weight, instance_weight, unlabeled_push_weight, consistency_weight : float
        α, β, γ_reg, λ, γ, δ.
    anchor : {"random", "mean"}
    instance_loss : {"dice", "bce"}
    dice : {"per_object", "pooled"}
        Reduction of the Dice losses of the instance and consistency terms.
    max_anchors : int
        K, the most consistency anchors per image.
    coverage_stop : float
        Uncovered fraction of the unlabeled region at which anchor drawing stops.
    backend : {"auto", "fused", "torch", "reference"}
        ``"fused"``: the C++/CUDA kernels of :mod:`spoco.ops` (memory ``O(B·N·D + B·K·D)``,
        one host synchronisation, traceable by ``torch.compile(fullgraph=True)``);
        ``"torch"``: batched, chunked PyTorch (any device); ``"auto"`` (the default): fused
        on CPU tensors and on CUDA tensors when spoco was built with its CUDA kernels,
        torch elsewhere; ``"reference"``: the loop oracle
        :func:`spoco.loss.reference.spoco_loss`. All make the same random draws. The fused
        backend computes ``instance_loss="bce"`` with the PyTorch building block.
    generator : torch.Generator, optional
        Default source of randomness for the anchors (overridable per call).

    Notes
    -----
    Call ``loss(f, target, g=None, *, generator=None, return_terms=False)`` with
    ``f``/``g`` float ``(B, D, *spatial)`` (2D or 3D) and integer ``target (B, *spatial)``.
    Returns the scalar loss (and the terms dict when ``return_terms``); ``last_terms``
    holds the detached terms and ``"total"`` of the latest call.
    """

    def __init__(self, *, sparse: bool = False, ignore_index: int = -1, delta_v: float = 0.5, delta_d: float = 2.0,
                 kernel_threshold: float = 0.9, pull_weight: float = 1.0, push_weight: float = 1.0,
                 reg_weight: float = 0.001, instance_weight: float = 1.0, unlabeled_push_weight: float = 1.0,
                 consistency_weight: float = 1.0, anchor: str = "random", instance_loss: str = "dice",
                 dice: str = "per_object", max_anchors: int = 20, coverage_stop: float = 0.05,
                 backend: str = "auto", generator: torch.Generator | None = None):
        super().__init__()
        for name, value in [("delta_v", delta_v), ("delta_d", delta_d)]:
            _check_real(name, value, low=0, low_open=True)
        _check_real("kernel_threshold", kernel_threshold, low=0, high=1, low_open=True, high_open=True)
        self.weights = {}
        for term, name, value in [("pull", "pull_weight", pull_weight), ("push", "push_weight", push_weight),
                                  ("reg", "reg_weight", reg_weight), ("instance", "instance_weight", instance_weight),
                                  ("unlabeled_push", "unlabeled_push_weight", unlabeled_push_weight),
                                  ("consistency", "consistency_weight", consistency_weight)]:
            self.weights[term] = _check_real(name, value, low=0)
        _check_real("coverage_stop", coverage_stop, low=0, high=1, high_open=True)
        if not isinstance(max_anchors, numbers.Integral) or isinstance(max_anchors, bool) or max_anchors < 1:
            raise ValueError(f"max_anchors must be a positive integer, got {max_anchors!r}")
        if not isinstance(ignore_index, numbers.Integral) or isinstance(ignore_index, bool):
            raise TypeError(f"ignore_index must be an integer, got {ignore_index!r}")
        if not -2 ** 63 <= ignore_index < 2 ** 63:  # compared with int64 labels
            raise ValueError(f"ignore_index must fit in int64, got {ignore_index}")
        for name, value, choices in [("anchor", anchor, ("random", "mean")),
                                     ("instance_loss", instance_loss, ("dice", "bce")),
                                     ("dice", dice, ("per_object", "pooled")), ("backend", backend, _BACKENDS)]:
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.sparse, self.ignore_index = bool(sparse), int(ignore_index)
        self.delta_v, self.delta_d, self.kernel_threshold = float(delta_v), float(delta_d), float(kernel_threshold)
        self.anchor, self.instance_loss, self.dice, self.backend = anchor, instance_loss, dice, backend
        self.max_anchors, self.coverage_stop = int(max_anchors), float(coverage_stop)
        self.generator = generator
        self.last_terms: dict[str, torch.Tensor] = {}
        try:
            sigma2 = self.sigma2
        except OverflowError:  # delta_v**2 beyond the float range
            sigma2 = float("inf")
        tiny = torch.finfo(torch.float32).tiny  # the kernel exp(-d / 2 sigma^2) is evaluated in float32
        if not tiny < sigma2 < 1 / tiny:
            raise ValueError(f"delta_v = {delta_v!r} with kernel_threshold = {kernel_threshold!r} gives the kernel "
                             f"width sigma^2 = {sigma2:g}, outside the float32 range [{tiny:.3g}, {1 / tiny:.3g}]")

    @property
    def sigma2(self) -> float:
        """σ² of the Gaussian kernel (Eq. 3)."""
        return kernel_sigma2(self.delta_v, self.kernel_threshold)

    def extra_repr(self) -> str:
        w = ", ".join(f"{k}={v:g}" for k, v in self.weights.items())
        return (f"sparse={self.sparse}, delta_v={self.delta_v:g}, delta_d={self.delta_d:g}, "
                f"t={self.kernel_threshold:g}, anchor={self.anchor!r}, instance_loss={self.instance_loss!r}, "
                f"dice={self.dice!r}, K={self.max_anchors}, backend={self.backend!r}, {w}")

    def forward(self, f: torch.Tensor, target: torch.Tensor, g: torch.Tensor | None = None, *,
                generator: torch.Generator | None = None, return_terms: bool = False):
        f, target, g = self._check_inputs(f, target, g)
        B = f.shape[0]
        keys = _draw_keys((B, target[0].numel()), f.device, generator or self.generator)
        if self.backend == "reference":
            raise_on_checks(*_value_flags(f, g, target, self.ignore_index).tolist())
            total, terms = reference.spoco_loss(
                f, target, g, keys=keys, sparse=self.sparse, ignore_index=self.ignore_index, delta_v=self.delta_v,
                delta_d=self.delta_d, kernel_threshold=self.kernel_threshold, anchor=self.anchor,
                instance_loss=self.instance_loss, dice=self.dice, max_anchors=self.max_anchors,
                coverage_stop=self.coverage_stop, **{f"{k}_weight": v for k, v in self.weights.items()})
        else:
            sums = (fused_sums if uses_fused_kernels(self.backend, f.device) else torch_sums)(
                f, target, g, keys, sparse=self.sparse, ignore_index=self.ignore_index, anchor=self.anchor,
                instance_loss=self.instance_loss, sigma2=self.sigma2, delta_v=self.delta_v, delta_d=self.delta_d,
                max_anchors=self.max_anchors, coverage_stop=self.coverage_stop)
            terms = assemble(sums, delta_d=self.delta_d, instance_loss=self.instance_loss, dice=self.dice)
            total = sum(self.weights[name] * terms[name] for name in TERMS)
        if not total.requires_grad and f.requires_grad:  # no term exists: keep a (zero) graph to f
            total = total + 0 * f.reshape(-1)[0]
        self.last_terms = {name: t.detach() for name, t in terms.items()}
        self.last_terms["total"] = total.detach()
        return (total, dict(self.last_terms)) if return_terms else total

    # ------------------------------------------------------------------ checks
    def _check_inputs(self, f, target, g):
        if not isinstance(f, torch.Tensor):
            raise TypeError(f"f must be a torch.Tensor, got {type(f).__name__}")
        if not f.is_floating_point():
            raise TypeError(f"f must be a floating point tensor, got dtype {f.dtype}")
        if f.dim() not in (4, 5):
            raise ValueError(f"f must have shape (B, D, H, W) or (B, D, Z, Y, X), got {tuple(f.shape)}")
        if f.shape[0] == 0:
            raise ValueError("f is an empty batch (B = 0)")
        if f.numel() == 0:
            raise ValueError(f"f has no elements (shape {tuple(f.shape)})")
        if not isinstance(target, torch.Tensor):
            raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target must be an integer tensor of labels, got dtype {target.dtype}")
        expected = (f.shape[0],) + tuple(f.shape[2:])
        if tuple(target.shape) != expected:
            raise ValueError(f"target must have shape (B, *spatial) = {expected} to match f {tuple(f.shape)}, "
                             f"got {tuple(target.shape)}")
        if target.device != f.device:
            raise ValueError(f"target is on {target.device} but f is on {f.device}")
        if g is not None:
            if not isinstance(g, torch.Tensor):
                raise TypeError(f"g must be a torch.Tensor or None, got {type(g).__name__}")
            if not g.is_floating_point():
                raise TypeError(f"g must be a floating point tensor, got dtype {g.dtype}")
            if g.dim() == f.dim() and g.shape[0] == f.shape[0] and g.shape[2:] == f.shape[2:] \
                    and g.shape[1] != f.shape[1]:
                raise ValueError(f"g has D = {g.shape[1]} embedding channels but f has D = {f.shape[1]}")
            if g.shape != f.shape:
                raise ValueError(f"g must have the same shape as f {tuple(f.shape)}, got {tuple(g.shape)}")
            if g.device != f.device:
                raise ValueError(f"g is on {g.device} but f is on {f.device}")
            if not self.sparse:
                raise ValueError("g is only used by the consistency term of the sparse mode; "
                                 "pass g=None or construct SPOCOLoss(sparse=True)")
        elif self.sparse and self.weights["consistency"] > 0:
            raise ValueError("g is required in sparse mode for the consistency term (Eq. 7); "
                             "pass the g-embeddings or set consistency_weight=0")
        if f.dtype in (torch.float16, torch.bfloat16):
            f = f.float()
        if g is not None:
            g = g.detach().to(f.dtype)
        return f, target.long(), g


# ------------------------------------------------------------------ helpers
def _check_real(name, value, *, low=None, high=None, low_open=False, high_open=False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value \
        and abs(value) != float("inf")
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}, "
        hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
        raise ValueError(f"{name} must be a finite number in {lo}{hi}, got {value!r}")
    return float(value)


def uses_fused_kernels(backend: str, device: torch.device) -> bool:
    """Whether ``backend`` on tensors of ``device`` runs spoco's kernels: ``"fused"`` always;
    ``"auto"`` on the CPU, and on CUDA when spoco was built with its CUDA kernels."""
    return backend == "fused" or (backend == "auto" and (
        device.type == "cpu" or (device.type == "cuda" and has_cuda_kernels())))


def _draw_keys(shape, device, generator) -> torch.Tensor:
    """Uniform float64 keys, one per pixel, from ``generator`` (moved to ``device``)."""
    gen_device = generator.device if generator is not None else device
    keys = torch.rand(shape, generator=generator, dtype=torch.float64, device=gen_device)
    return keys.to(device)


def _value_flags(f, g, target, ignore_index) -> torch.Tensor:
    """int64 (3,): f non-finite, g non-finite, target has negative labels (not ignore_index)."""
    bad_g = (~torch.isfinite(g)).any() if g is not None else torch.zeros((), dtype=torch.bool, device=f.device)
    bad_t = ((target < 0) & (target != ignore_index)).any()
    return torch.stack([(~torch.isfinite(f)).any(), bad_g, bad_t]).long()
