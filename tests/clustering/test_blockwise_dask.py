"""Block-wise clustering of Dask arrays: same result as the threaded run, on the
local schedulers and on a ``distributed`` cluster of processes."""
from __future__ import annotations

import numpy as np
import pytest
import zarr

import spoco
from spoco.clustering import default_offsets

da = pytest.importorskip("dask.array")


def _setup(volume, rng, shape=(20, 50, 60)):
    _, emb = volume(rng, shape, 12)
    off, n_att = default_offsets(3, (3, 9))
    kw = dict(block_shape=(8, 24, 24), halo=9, offsets=off, n_attractive=n_att)
    return emb, kw, spoco.cluster_blockwise(emb, threads=2, **kw)


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_dask_equals_threaded(volume, rng, seed, tmp_path, scheduler):
    import dask

    emb, kw, ref = _setup(volume, rng)
    # chunks unlike the blocks: the per-block tasks gather core + halo from several chunks
    d = da.from_array(emb, chunks=(8, 7, 30, 25))
    mask = da.from_array(np.ones(emb.shape[1:], bool), chunks=(10, 25, 30))
    with dask.config.set(scheduler=scheduler):
        got = spoco.cluster_blockwise(d, mask=mask, **kw)
        np.testing.assert_array_equal(got, ref, err_msg=f"seed {seed}")
        out = zarr.create_array(store=str(tmp_path / "o.zarr"), shape=ref.shape, chunks=(5, 20, 20), dtype="u4")
        spoco.cluster_blockwise(d, out=out, min_size=50, **kw)
    np.testing.assert_array_equal(out[:], spoco.cluster_blockwise(emb, min_size=50, threads=1, **kw))
    assert out.attrs["spoco_complete"] is True


def test_dask_distributed_processes(volume, rng, seed):
    distributed = pytest.importorskip("distributed")
    emb, kw, ref = _setup(volume, rng, shape=(16, 40, 48))
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                                  silence_logs=50) as cluster, distributed.Client(cluster):
        got = spoco.cluster_blockwise(da.from_array(emb, chunks=(8, 8, 24, 24)), **kw)
    np.testing.assert_array_equal(got, ref, err_msg=f"seed {seed}")
