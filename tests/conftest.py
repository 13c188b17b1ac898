"""Shared fixtures (fresh random seeds that are reported on failure) and the
data generators of the tests (the one place where test inputs are made).

Every test that takes ``rng`` gets a generator seeded from a fresh
``np.random.SeedSequence().entropy``. The seed is shown in the failure report
(and should be in assertion messages); to rerun a failing test with the same
data::

    SPOCO_TEST_SEED=<seed> .venv/bin/python -m pytest 'tests/test_mws.py::test_name[id]'
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/mws_oracle.py etc.

_SEED_KEY = pytest.StashKey[int]()


@pytest.fixture
def seed(request) -> int:
    """A fresh random seed (or ``$SPOCO_TEST_SEED``), recorded for the failure report."""
    env = os.environ.get("SPOCO_TEST_SEED")
    s = int(env) if env else int(np.random.SeedSequence().entropy)
    request.node.stash[_SEED_KEY] = s
    request.node.user_properties.append(("seed", s))
    return s


@pytest.fixture
def rng(seed) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    s = item.stash.get(_SEED_KEY, None)
    if s is not None and report.failed:
        report.sections.append(("random seed", f"rerun with SPOCO_TEST_SEED={s}"))
    return report


# ---- data generators of the loss tests -------------------------------------
import torch  # noqa: E402

from spoco.data.synthetic import random_instances  # noqa: E402


def make_batch(seed: int, B: int = 2, spatial=(9, 10), D: int = 3, n_objects: int = 6, *, ignore: float = 0.0,
               empty=(), single=(), dtype=torch.float64, spread: float = 0.6, g_noise: float = 0.3):
    """Random embeddings ``f, g (B, D, *spatial)`` around per-instance centres and labels ``(B, *spatial)``.

    Labels are non-consecutive ids (random values up to 10⁶) with background 0;
    images listed in ``empty`` have no object, those in ``single`` exactly one; a
    fraction ``ignore`` of pixels is set to -1. Centres are spread so that pull,
    push and unlabeled push hinges are active for some pairs and not for others.
    """
    rng = np.random.default_rng(seed)
    labels = []
    for b in range(B):
        lab = random_instances(spatial, n_objects, background=0.25, rng=rng)
        ids = np.unique(lab[lab > 0])
        if b in empty:
            lab[:] = 0
        elif b in single and ids.size:
            lab[lab != ids[0]] = 0
        lut = np.zeros(lab.max() + 1, dtype=np.int64)
        lut[1:] = rng.choice(10**6, size=lab.max(), replace=False) + 1
        lab = lut[lab]
        if ignore:
            lab[rng.random(lab.shape) < ignore] = -1
        labels.append(lab)
    target = torch.from_numpy(np.stack(labels))
    f = np.empty((B, D) + tuple(spatial))
    for b in range(B):
        ids, inv = np.unique(target[b].numpy(), return_inverse=True)
        c = rng.normal(scale=1.2, size=(ids.size, D))
        f[b] = np.moveaxis(c[inv.reshape(spatial)], -1, 0)
    f += rng.normal(scale=spread, size=f.shape)
    f = torch.from_numpy(f).to(dtype)
    g = f + g_noise * torch.from_numpy(rng.normal(size=f.shape)).to(dtype)
    return f, g, target


@pytest.fixture(scope="session")
def batch():
    """``make_batch`` as a fixture (usable from every test directory)."""
    return make_batch


@pytest.fixture
def torch_single_thread():
    """Run a test with one intra-op torch thread (restored afterwards).

    Test inputs are tiny; on small shared machines MKL/OpenMP threads spin-wait
    against other load and make every small batched matmul take milliseconds.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- data generators of the block-wise clustering tests ----------------------
from spoco.data.synthetic import synthetic_embeddings  # noqa: E402


def make_volume(rng, shape, n_objects: int, *, dim: int = 8, background_texture: float = 0.0):
    """Instances ``(*shape)`` (warped Voronoi cells, 30 % background, objects large
    enough to cross several block faces) and their float32 embeddings ``(dim, *shape)``."""
    labels = random_instances(shape, n_objects, rng=rng)
    emb = synthetic_embeddings(labels, dim, rng=rng, background_texture=background_texture)
    return labels, emb


@pytest.fixture(scope="session")
def volume():
    """``make_volume`` as a fixture."""
    return make_volume
