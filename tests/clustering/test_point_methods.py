"""spoco.cluster with the point-cloud methods: HDBSCAN, mean-shift, consistency
clustering (Algorithm 1) and mean-shift + merge."""
import numpy as np
import pytest
from sklearn.cluster import MeanShift

import spoco
from spoco.clustering import consistent_clusters, mean_shift, merge_close_clusters
from spoco.data.synthetic import random_instances, synthetic_embeddings

METHODS = ["hdbscan", "meanshift", "consistency", "meanshift_merge"]


def tight(labels, seed=0, spread=0.04):
    """Well-separated clusters: tight spread, no background texture."""
    return synthetic_embeddings(labels, 6, spread=spread, background_texture=0.0, rng=seed)


def run(emb, method, **kw):
    if method == "consistency":
        kw.setdefault("emb_g", emb + 0.01 * np.random.default_rng(9).normal(size=emb.shape).astype(emb.dtype))
    if method == "hdbscan":
        kw.setdefault("min_size", 20)
    return spoco.cluster(emb, method, **kw)


def same_partition(a, b):
    """a and b are the same partition (up to the ids), with 0 in the same places."""
    assert np.array_equal(a == 0, b == 0)
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def check_convention(labels, shape):
    assert labels.dtype == np.int64 and labels.shape == shape
    ids = np.unique(labels)
    ids = ids[ids > 0]
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))


GT2 = random_instances((64, 64), 10, background=0.2, rng=1)
GT3 = random_instances((12, 24, 24), 8, background=0.2, rng=2)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("gt", [GT2, GT3], ids=["2d", "3d"])
def test_recovers_well_separated_clusters(method, gt):
    emb = tight(gt)
    labels = run(emb, method)
    check_convention(labels, gt.shape)
    same_partition(labels, gt + 1)  # the background is one more cluster
    masked = run(emb, method, mask=gt > 0)
    check_convention(masked, gt.shape)
    same_partition(masked, gt)


@pytest.mark.parametrize("method", METHODS)
def test_subsampled_fit_still_exact(method):
    gt = GT2
    labels = run(tight(gt, seed=3), method, max_points=600, mask=gt > 0)
    same_partition(labels, gt)


@pytest.mark.parametrize("method", METHODS)
def test_semantic_classes_are_clustered_separately(method):
    # Two objects share one embedding cluster but belong to different classes.
    gt = np.zeros((32, 48), dtype=np.int64)
    gt[4:14, 4:20] = 1
    gt[18:30, 4:20] = 2
    gt[4:30, 26:44] = 3
    semantic = np.zeros_like(gt)
    semantic[:16] = 2
    semantic[16:] = 1
    same_emb_gt = np.where(gt == 2, 1, gt)
    emb = tight(same_emb_gt)
    labels = run(emb, method, mask=gt > 0, semantic=semantic, min_size=10)
    check_convention(labels, gt.shape)
    # object 3 spans both classes: it becomes two objects, one per class.
    expect = np.where(gt == 3, 3 + (semantic == 2), gt)
    same_partition(labels, expect)
    # Class 1 (rows 16:) is numbered first.
    assert labels[16:][labels[16:] > 0].max() < labels[:16][labels[:16] > 0].min()
    # Class 0 is background.
    semantic[:, :24] = 0
    labels = run(emb, method, semantic=semantic, min_size=10)
    assert (labels[:, :24] == 0).all() and (labels[:, 24:] > 0).all()


@pytest.mark.parametrize("method", METHODS)
def test_min_size_and_seed(method):
    gt = np.zeros((40, 40), dtype=np.int64)
    gt[:, :30] = 1
    gt[5:8, 33:36] = 2  # 9 pixels
    emb = tight(gt)
    labels = run(emb, method, min_size=12 if method != "hdbscan" else 20)
    assert (labels[5:8, 33:36] == 0).all() and labels.max() == 2  # the 9-pixel object is gone
    again = run(emb, method, min_size=12 if method != "hdbscan" else 20)
    np.testing.assert_array_equal(labels, again)


def test_torch_input():
    torch = pytest.importorskip("torch")
    emb = tight(GT2)
    a = spoco.cluster(torch.from_numpy(emb), "meanshift", mask=torch.from_numpy(GT2 > 0))
    same_partition(a, GT2)


# ---- the algorithms themselves ------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_mean_shift_equals_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(c, 0.25, (150, 3)) for c in rng.normal(0, 1.5, (6, 3))])
    ref = MeanShift(bandwidth=0.5, bin_seeding=True).fit(X)
    centres, labels = mean_shift(X, 0.5)
    assert centres.shape == ref.cluster_centers_.shape
    np.testing.assert_allclose(centres, ref.cluster_centers_, atol=1e-9)
    np.testing.assert_array_equal(labels, ref.labels_)


def test_consistency_discards_clusters_that_g_does_not_reproduce():
    gt = np.zeros((30, 40), dtype=np.int64)
    gt[:, 20:] = 1
    gt[10:20, 5:15] = 2
    f = tight(gt)
    g = f.copy()
    # In g, object 2 is scattered: the δ_v-balls of its anchors catch few of its pixels.
    noise = np.random.default_rng(0).normal(size=f.shape).astype(np.float32)
    g[:, gt == 2] += 3.0 * noise[:, gt == 2]
    labels = spoco.cluster(f, "consistency", emb_g=g)
    assert (labels[gt == 2] == 0).all()
    same_partition(np.where(gt == 2, 0, labels), np.where(gt == 2, 0, gt + 1))
    # A threshold of 0 keeps everything that has any overlap.
    kept = spoco.cluster(f, "consistency", emb_g=g, iou_threshold=0.0)
    assert (kept[gt == 2] > 0).all()


def test_consistent_clusters_median_rule():
    rng = np.random.default_rng(0)
    g = np.concatenate([np.zeros((50, 2)), np.full((50, 2), 5.0)])
    labels = np.r_[np.full(50, 1), np.full(30, 2), np.full(20, 3)]
    keep = consistent_clusters(g, labels, delta_v=0.5, iou_threshold=0.6, n_anchors=5, rng=rng)
    # cluster 1 equals its g-ball (IoU 1); 2 and 3 share one ball: IoU 0.6 and 0.4.
    assert keep.tolist() == [False, True, False, False]
    keep = consistent_clusters(g, labels, delta_v=0.5, iou_threshold=0.59, n_anchors=5, rng=rng)
    assert keep.tolist() == [False, True, True, False]


def test_meanshift_merge_merges_close_cluster_means():
    X = np.concatenate([np.zeros((40, 2)), np.full((40, 2), [1.0, 0.0]), np.full((40, 2), [6.0, 0.0])])
    labels = np.repeat([1, 2, 3], 40)
    merged = merge_close_clusters(X, labels, delta_d=2.0)
    assert merged[0] == merged[40] != merged[80] and set(merged) == {1, 2}
    # Chains merge transitively; 0 stays 0.
    chain = merge_close_clusters(X, np.r_[np.zeros(40, int), labels[40:]], delta_d=6.0)
    assert (chain[:40] == 0).all() and len(set(chain[40:])) == 1
    # Image level: two objects 1.0 apart in embedding space (> bandwidth): mean-shift
    # keeps them apart, the merge joins them.
    gt = np.zeros((20, 30), dtype=np.int64)
    gt[:, 10:20] = 1
    gt[:, 20:] = 2
    emb = np.zeros((2, 20, 30), dtype=np.float32)
    emb[0][gt == 1] = 1.0
    emb[0][gt == 2] = 6.0
    assert spoco.cluster(emb, "meanshift").max() == 3
    same_partition(spoco.cluster(emb, "meanshift_merge", delta_d=2.0), np.where(gt == 2, 2, 1))


def test_mws_accepts_semantic_classes():
    gt = np.zeros((32, 32), dtype=np.int64)
    gt[:, 16:] = 1
    semantic = np.ones_like(gt)
    semantic[16:] = 3
    emb = tight(gt, spread=0.01)
    labels = spoco.cluster(emb, "mws", semantic=semantic)
    check_convention(labels, gt.shape)
    same_partition(labels, gt + 1 + 2 * (semantic == 3))


# ---- errors -----------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_bad_shapes(method):
    emb = tight(GT2)
    with pytest.raises(ValueError, match="emb must have shape"):
        run(np.zeros(10, np.float32), method)
    with pytest.raises(ValueError, match="emb must have shape"):
        run(np.zeros((2, 3, 4, 5, 6), np.float32), method)
    with pytest.raises(ValueError, match="mask must have shape"):
        run(emb, method, mask=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="semantic must have shape"):
        run(emb, method, semantic=np.ones((3, 3), int))
    with pytest.raises(TypeError, match="semantic must be an integer"):
        run(emb, method, semantic=np.ones(GT2.shape))
    with pytest.raises(ValueError, match="delta_v"):
        run(emb, method, delta_v=0)


def test_consistency_needs_matching_emb_g():
    emb = tight(GT2)
    with pytest.raises(ValueError, match="needs emb_g"):
        spoco.cluster(emb, "consistency")
    with pytest.raises(ValueError, match="emb_g must have the spatial shape"):
        spoco.cluster(emb, "consistency", emb_g=emb[:, :10])
    with pytest.raises(ValueError, match="iou_threshold"):
        spoco.cluster(emb, "consistency", emb_g=emb, iou_threshold=1.5)


def test_arguments_of_other_methods_are_refused():
    emb = tight(GT2)
    with pytest.raises(ValueError, match="emb_g is only used by method='consistency'"):
        spoco.cluster(emb, "meanshift", emb_g=emb)
    with pytest.raises(ValueError, match="offsets is only used by method='mws'"):
        spoco.cluster(emb, "hdbscan", offsets=[[0, 1]], n_attractive=1)
    with pytest.raises(ValueError, match="min_samples is only used by method='hdbscan'"):
        spoco.cluster(emb, "mws", min_samples=3)
    with pytest.raises(ValueError, match="method must be one of"):
        spoco.cluster(emb, "kmeans")


@pytest.mark.parametrize("method", METHODS)
def test_empty_and_single_pixel_regions(method):
    emb = np.random.default_rng(0).normal(size=(3, 10, 10)).astype(np.float32)
    none = np.zeros((10, 10), bool)
    assert (run(emb, method, mask=none) == 0).all()
    assert (run(emb, method, semantic=none.astype(int)) == 0).all()
    one = none.copy()
    one[3, 3] = True
    labels = run(emb, method, mask=one, min_size=0)
    assert (labels[~one] == 0).all() and labels[3, 3] == (0 if method == "hdbscan" else 1)


@pytest.mark.parametrize("method", ["mws", "meanshift"])
def test_a_plain_image_is_refused_with_a_hint(method):
    import spoco

    with pytest.raises(ValueError, match=r"2-D array of shape \(30, 40\); for a single-channel 2D image pass emb\[None\]"):
        spoco.cluster(np.zeros((30, 40), dtype=np.float32), method)
