"""Thread counts from the CPUs the process may use."""
import os

import pytest
import torch

from spoco import _core, threads


def test_available_cpus_respects_affinity_and_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: None)
    assert threads.available_cpus() == 4
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 1.5)
    assert threads.available_cpus() == 1
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 0.2)
    assert threads.available_cpus() == 1


def test_cgroup_quota_parsing(tmp_path, monkeypatch):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    real_path = threads.Path
    monkeypatch.setattr(threads, "Path", lambda p: cpu_max if p == "/sys/fs/cgroup/cpu.max" else real_path(p))
    assert threads._cgroup_quota() == 1.5
    cpu_max.write_text("max 100000\n")
    assert threads._cgroup_quota() is None


def test_set_threads_sets_torch_and_core():
    before = torch.get_num_threads()
    try:
        assert threads.set_threads(1) == 1
        assert torch.get_num_threads() == 1
        if _core.has_openmp:
            assert _core.max_threads() == 1
        with pytest.raises(ValueError, match="threads"):
            threads.set_threads(0)
    finally:
        threads.set_threads(before)

