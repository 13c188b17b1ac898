"""Turning pixel embeddings into instances (paper, Sec. 3.3 and appendix A.4)."""
from __future__ import annotations

import numpy as np

from .._cuda_loader import has_cuda_kernels
from .._validation import is_int, is_tensor, positive_float
from .mws import (embedding_affinities, mutex_watershed, mutex_watershed_embeddings, mutex_watershed_graph,
                  remove_small_segments)
from .offsets import default_offsets
from .blockwise import cluster_blockwise
from .postprocess import merge_close_segments, postprocess, remove_background, segment
from ._dispatch import POINT_METHODS, check_method_args, cluster_points, per_class
from .consistency import consistency_clustering, consistent_clusters
from .hdbscan import hdbscan_clustering
from .meanshift import mean_shift, meanshift_clustering
from .meanshift_merge import meanshift_merge_clustering, merge_close_clusters

__all__ = ["cluster", "cluster_blockwise", "mutex_watershed", "mutex_watershed_embeddings", "mutex_watershed_graph",
           "embedding_affinities", "default_offsets", "remove_small_segments", "METHODS",
           "hdbscan_clustering", "meanshift_clustering", "mean_shift", "consistency_clustering",
           "meanshift_merge_clustering", "consistent_clusters", "merge_close_clusters", "segment", "postprocess",
           "remove_background", "merge_close_segments"]

METHODS = ("mws",) + POINT_METHODS


def cluster(emb, method: str = "mws", *, delta_d: float = 2.0, offsets=None, n_attractive=None,
            strides=None, randomize_strides: bool = False, seed: int = 0, mask=None, min_size: int = 0,
            threads=None, delta_v: float = 0.5, semantic=None, emb_g=None, iou_threshold=None,
            n_anchors=None, min_samples=None, max_points=None) -> np.ndarray:
    """Cluster pixel embeddings into instances.

    Parameters
    ----------
    emb : numpy array or torch tensor (CPU or CUDA), shape (D, *spatial) with 2 or 3 spatial axes, float
        Pixel embeddings of one 2D image (D, H, W) or 3D volume (D, Z, Y, X).
    method : "mws" | "hdbscan" | "meanshift" | "consistency" | "meanshift_merge"
        "mws": mutex watershed on the long-range embedding affinities of Eq. 12.
        "hdbscan": HDBSCAN, ``min_cluster_size = min_size``, ``cluster_selection_epsilon
        = delta_v`` (:func:`hdbscan_clustering`). "meanshift": mean-shift with
        bandwidth ``delta_v`` (:func:`meanshift_clustering`). "consistency":
        Algorithm 1 of appendix A.4, needs ``emb_g`` (:func:`consistency_clustering`).
        "meanshift_merge": mean-shift, then clusters whose means are closer than
        ``delta_d`` are merged (Sec. 4.2, :func:`meanshift_merge_clustering`).
    delta_d : float
        Push hinge of the loss; embeddings 2 * delta_d apart are maximally repulsive
        ("mws"); merge distance of "meanshift_merge".
    delta_v : float
        Pull margin of the loss: HDBSCAN's epsilon, the mean-shift bandwidth and
        the anchor-ball radius of "consistency".
    offsets : (C, ndim) ints, optional
        Edge offsets. Default: nearest neighbours along every axis (attractive), then
        3, 9 and 27 pixels along every axis (repulsive); see :func:`default_offsets`.
    n_attractive : int, optional
        Number of leading attractive offsets; required with explicit ``offsets``.
    strides, randomize_strides, seed :
        Subsampling of repulsive edges, see :func:`mutex_watershed`.
    mask : bool array (*spatial), optional
        Foreground; pixels outside get label 0.
    semantic : int array (*spatial), optional
        Semantic classes: each class > 0 is clustered on its own (within ``mask``),
        class 0 is background. Objects of the first class are numbered first, then
        those of the next class, and so on, so ids never collide.
    min_size : int
        Segments smaller than this (in pixels) become 0 (and HDBSCAN's
        ``min_cluster_size``).
    threads : int, optional
        CPU threads ("mws": the result does not depend on it).
    emb_g : (D_g, *spatial), "consistency" only
        g-embeddings of the same image.
    iou_threshold, n_anchors : "consistency" only
        t_IoU (default 0.6) and anchors per cluster M (default 10, at most 10 000).
    min_samples : int, "hdbscan" only
        HDBSCAN's ``min_samples`` (default: ``min_cluster_size``).
    max_points : int, point-cloud methods only
        Fit on at most this many pixels per region (default 20000), drawn
        uniformly at random with ``seed``, then give every pixel the nearest mode
        (mean-shift) or the label of its nearest fitted pixel (HDBSCAN).

    Returns
    -------
    labels : int64 numpy array (*spatial): 0 = background/masked, objects 1..K.

    Notes
    -----
    Edges are processed by priority descending, ties by edge id ascending
    (channel, then pixel), so results are deterministic. Embeddings on a CUDA
    device get their affinities computed on the GPU when spoco was built with its CUDA
    kernels (on the CPU otherwise); the mutex watershed itself runs on the CPU.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if (emb.dim() if is_tensor(emb) else np.ndim(emb)) == 2:  # a plain image would be read as D = H channels
        raise ValueError(f"emb must have shape (D, *spatial) with 2 or 3 spatial axes, got a 2-D array of shape "
                         f"{tuple(emb.shape)}; for a single-channel 2D image pass emb[None]")
    if not is_int(min_size) or min_size < 0:
        raise ValueError(f"min_size must be a non-negative integer, got {min_size!r}")
    check_method_args(method, offsets=offsets, n_attractive=n_attractive, strides=strides,
                      randomize_strides=randomize_strides, emb_g=emb_g, iou_threshold=iou_threshold,
                      n_anchors=n_anchors, min_samples=min_samples, max_points=max_points)
    if method in POINT_METHODS:
        return cluster_points(emb, method, delta_v=delta_v, delta_d=delta_d, mask=mask, semantic=semantic,
                              min_size=int(min_size), seed=seed, threads=threads, emb_g=emb_g,
                              iou_threshold=iou_threshold, n_anchors=n_anchors, min_samples=min_samples,
                              max_points=max_points)
    if semantic is not None:
        def run(region):
            return cluster(emb, "mws", delta_d=delta_d, offsets=offsets, n_attractive=n_attractive,
                           strides=strides, randomize_strides=randomize_strides, seed=seed, mask=region,
                           threads=threads)
        return per_class(emb, mask, semantic, int(min_size), run)
    ndim = emb.dim() - 1 if is_tensor(emb) else np.ndim(emb) - 1
    if ndim < 1:
        raise ValueError(f"emb must have shape (D, *spatial), got shape {tuple(emb.shape)}")
    if offsets is None:
        offsets, n_attractive = default_offsets(ndim)
    common = dict(strides=strides, randomize_strides=randomize_strides, seed=seed, mask=mask, threads=threads)
    if is_tensor(emb) and emb.device.type == "cuda" and has_cuda_kernels():
        labels = _mws_from_cuda(emb, offsets, n_attractive, delta_d, common)
    else:
        labels = mutex_watershed_embeddings(emb, offsets, n_attractive, delta_d=delta_d, **common)
    return remove_small_segments(labels, int(min_size))


def _mws_from_cuda(emb, offsets, n_attractive, delta_d, common):
    import torch

    from ..ops import embedding_affinities as affinities_op
    from .mws import _grid, grid_mws

    ndim = emb.dim() - 1
    if emb.dtype == torch.float16 or emb.dtype == torch.bfloat16:
        emb = emb.float()
    if emb.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"emb must be a float tensor, got {emb.dtype}")
    if emb.numel() == 0:
        raise ValueError(f"emb is empty (shape {tuple(emb.shape)})")
    if not bool(torch.isfinite(emb).all()):
        raise ValueError("emb contains NaN or infinite values")
    delta_d = positive_float(delta_d, "delta_d")  # (the CPU path checks it in mutex_watershed_embeddings)
    shape3, off3, n_att = _grid(tuple(emb.shape[1:]), offsets, n_attractive)  # offsets checked once
    aff = affinities_op(emb.contiguous(), off3[:, 3 - ndim:].ravel().tolist(), ndim, n_att, delta_d)
    return grid_mws(aff.cpu().numpy(), shape3, off3, n_att, **common)  # finite: the embeddings were
