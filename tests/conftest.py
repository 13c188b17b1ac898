"""Shared fixtures: fresh random seeds that are reported on failure.

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
