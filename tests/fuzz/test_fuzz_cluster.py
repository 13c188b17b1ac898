"""Property tests of ``spoco.cluster`` (every method) and the post-processing on hostile
embeddings: random shapes (1-D to 5-D arrays, empty axes), dtypes (float16/32/64, ints,
bool, complex), NaN/inf and extreme values, masks of any shape and dtype.

Valid embeddings (float, finite, ``(D >= 1, *spatial)`` with 2 or 3 non-empty spatial
axes) must give labels of the spatial shape, integer, 0 outside the mask, objects
numbered 1..K; anything else must be refused naming the argument."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import spoco
from spoco.clustering import METHODS, postprocess, remove_small_segments
from tests._helpers.fuzz import FLOAT_KINDS, FUZZ, floats, labels, outcome, shapes, valid_labels

ARGS = ("emb", "mask", "min_size", "threads", "emb_g", "D, *spatial", "spatial")
EMB_DTYPES = ("float32", "float64", "float16", "int32", "bool", "complex64")


def check_labels(out, spatial, mask=None) -> None:
    assert isinstance(out, np.ndarray) and out.shape == tuple(spatial), (type(out), getattr(out, "shape", None))
    assert out.dtype.kind in "iu"
    ids = np.unique(out)
    assert ids.min(initial=0) >= 0
    objects = ids[ids > 0]
    np.testing.assert_array_equal(objects, np.arange(1, len(objects) + 1))  # objects 1..K
    if mask is not None:
        assert not out[~mask.astype(bool)].any()


@st.composite
def embeddings(draw):
    """``(shape, dtype, kind, seed)``: half of them valid, so that results get checked too."""
    if draw(st.booleans()):
        ndim = draw(st.integers(2, 3))
        shape = (draw(st.integers(1, 3)),) + draw(shapes(ndim, ndim, max_side=6, min_side=1))
        dtype = draw(st.sampled_from(("float16", "float32", "float64")))
        kind = draw(st.sampled_from([k for k in FLOAT_KINDS if k not in ("nan", "inf")]))
    else:
        ndim = draw(st.integers(0, 4))  # array dimensions 1..5
        shape = (draw(st.integers(0, 3)),) + draw(shapes(ndim, ndim, max_side=6))
        dtype = draw(st.sampled_from(EMB_DTYPES))
        kind = draw(st.sampled_from(FLOAT_KINDS))
    return shape, dtype, kind, draw(st.integers(0, 2 ** 32 - 1))


def _valid_emb(shape, dtype, kind) -> bool:
    return (dtype.startswith("float") and kind not in ("nan", "inf") and len(shape) in (3, 4)
            and min(shape) >= 1)


@FUZZ
@given(embeddings(), st.sampled_from(METHODS), st.sampled_from([None, "ok", "wrong_shape", "float", "all_zero"]),
       st.integers(0, 3), st.booleans())
def test_cluster_gives_labels_or_names_the_argument(emb_params, method, mask_kind, min_size, as_tensor):
    shape, dtype, kind, seed = emb_params
    emb = floats(shape, kind, dtype, seed)
    if as_tensor:  # torch tensors take the same checks (CPU here)
        emb = torch.from_numpy(emb)
    spatial = shape[1:]
    mask = None
    if mask_kind is not None:
        mshape = spatial if mask_kind != "wrong_shape" else spatial + (1,)
        mask = np.random.default_rng(seed).random(mshape) > (1.0 if mask_kind == "all_zero" else 0.3)
        mask = mask.astype(np.float32) if mask_kind == "float" else mask
    extra = {"emb_g": emb} if method == "consistency" else {}
    kind_, out = outcome(spoco.cluster, ARGS, emb, method, mask=mask, min_size=min_size, **extra)
    valid = _valid_emb(shape, dtype, kind) and mask_kind in (None, "ok", "all_zero")
    assert (kind_ == "ok") == valid, (emb_params, method, mask_kind, out)
    if valid:
        check_labels(out, spatial, mask)


@FUZZ
@given(labels(), st.integers(0, 4), st.sampled_from(["none", "largest", "embedding"]), st.floats(0, 3))
def test_postprocessing_takes_any_ids_or_names_the_labels(lab_params, min_size, background, merge):
    """Huge ids (2**62, 2**63 - 1) are legal segment ids: post-processing must not build
    tables of max(id) + 1 entries (np.bincount of 2**63 - 1 corrupts memory)."""
    lab = lab_params.make()
    emb = floats((2,) + lab.shape, "normal", "float32", lab_params.seed)
    kind, out = outcome(postprocess, ("labels", "emb"), lab, emb, merge_distance=merge, background=background,
                        min_size=min_size)
    if not valid_labels(lab):
        assert kind == "error", out
        return
    if lab.size == 0:  # empty: a result or a clear error (no embedding to average), both fine
        return
    assert kind == "ok", out
    check_labels(out, lab.shape)
    assert not out[lab == 0].any()  # background stays background
    if background == "none" and merge == 0:  # only the size filter: the same partition of the kept pixels
        kept = out > 0
        pairs = np.unique(np.stack([lab[kept], out[kept]]), axis=1)
        assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


@FUZZ
@given(labels(kinds=("small", "huge", "negative", "one")), st.integers(0, 5))
def test_remove_small_segments_takes_any_ids(lab_params, min_size):
    lab = lab_params.make()
    kind, out = outcome(remove_small_segments, ("labels",), lab, min_size)
    if min_size <= 1:  # documented: returned as given
        assert kind == "ok" and out is lab
        return
    assert (kind == "ok") == valid_labels(lab), out
    if kind == "ok":
        check_labels(out, lab.shape)
        ids, sizes = np.unique(lab[lab > 0], return_counts=True)
        assert out.max(initial=0) == int((sizes >= min_size).sum())


@pytest.mark.parametrize("threads", [0, -1, 10 ** 5, 2 ** 40, 1.5, "2"])
def test_absurd_thread_counts_are_refused_before_any_thread_starts(threads):
    """10**5 OpenMP threads exhaust the process's memory: refused, not attempted."""
    emb = np.zeros((2, 4, 4), np.float32)
    for method in ("mws", "hdbscan"):
        with pytest.raises(ValueError, match="threads"):
            spoco.cluster(emb, method, threads=threads)
    with pytest.raises(ValueError, match="threads"):
        spoco.metrics.evaluate(np.zeros((2, 2), int), np.zeros((2, 2), int), threads=threads)


def test_absurd_anchor_count_is_refused_before_allocating():
    emb = np.random.default_rng(0).standard_normal((2, 6, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="n_anchors must be at most"):
        spoco.cluster(emb, "consistency", emb_g=emb, n_anchors=10 ** 12)
    check_labels(spoco.cluster(emb, "consistency", emb_g=emb, n_anchors=50), (6, 6))
