"""Shared fixtures: one random seed per test run, and the test data generators of
:mod:`tests._helpers.data` as fixtures.

The run's seed is ``$SPOCO_TEST_SEED`` or a fresh one, printed when the run starts.
Every test that takes ``seed`` (or ``rng``) gets a seed derived from the run's seed and
the test's id, and hypothesis draws from the run's seed, so one number replays a whole
run or any single test::

    SPOCO_TEST_SEED=<seed> .venv/bin/python -m pytest 'tests/clustering/test_mws.py::test_name[id]'

A failing test's report repeats the command's seed.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch

from tests._helpers.data import make_batch, make_images, make_volume

RUN_SEED = int(os.environ.get("SPOCO_TEST_SEED") or np.random.SeedSequence().entropy % 2**63)
_SEED_KEY = pytest.StashKey[int]()


def pytest_configure(config):
    if getattr(config.option, "hypothesis_seed", None) is None and hasattr(config.option, "hypothesis_seed"):
        config.option.hypothesis_seed = RUN_SEED


def pytest_sessionstart(session):
    # written even under -q (a report header would not be)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"random seed: {RUN_SEED} (replay with SPOCO_TEST_SEED={RUN_SEED})")


def seed_of(nodeid: str) -> int:
    """The seed of one test: a hash of the run's seed and the test's id."""
    digest = hashlib.blake2b(f"{RUN_SEED}:{nodeid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**63


@pytest.fixture
def seed(request) -> int:
    """This test's seed (see the module docstring), recorded for the failure report."""
    s = seed_of(request.node.nodeid)
    request.node.stash[_SEED_KEY] = s
    request.node.user_properties.append(("seed", s))
    return s


@pytest.fixture
def rng(seed) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        s = item.stash.get(_SEED_KEY, None)
        extra = f" (this test's seed {s})" if s is not None else ""
        report.sections.append(("random seed", f"rerun with SPOCO_TEST_SEED={RUN_SEED}{extra}"))
    return report


@pytest.fixture(scope="session")
def batch():
    """``make_batch`` as a fixture (usable from every test directory)."""
    return make_batch


@pytest.fixture(scope="session")
def volume():
    """``make_volume`` as a fixture."""
    return make_volume


@pytest.fixture(scope="session")
def tiny_data():
    """A tiny synthetic training set (8 images) and validation set (2)."""
    return make_images(8, seed=1), make_images(2, seed=2)


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


