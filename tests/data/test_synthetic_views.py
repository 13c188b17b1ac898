"""spoco.data.synthetic.synthetic_embedding_views: f/g-like views of one image."""
import numpy as np

from spoco.data.synthetic import random_instances, synthetic_embedding_views, synthetic_embeddings


def test_views_share_centres_not_noise():
    gt = random_instances((40, 40), 6, rng=0)
    f, g = synthetic_embedding_views(gt, 4, spread=0.05, rng=3)
    np.testing.assert_array_equal(f, synthetic_embeddings(gt, 4, spread=0.05, rng=3))
    assert f.shape == g.shape == (4, 40, 40) and f.dtype == g.dtype == np.float32
    assert not np.array_equal(f, g)
    for k in np.unique(gt):
        mf, mg = f[:, gt == k].mean(1), g[:, gt == k].mean(1)
        assert np.linalg.norm(mf - mg) < 0.5  # same centre up to noise/texture
