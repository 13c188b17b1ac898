"""Checkpoints are written atomically and never execute code when read."""
import os
import pickle

import pytest
import torch

from spoco.training import load_checkpoint, save_checkpoint


def test_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(5.0)}, "iteration": 7, "config": {"lr": 1e-4, "patch": [8, 8]}}
    save_checkpoint(tmp_path / "a" / "ck.pt", state)
    loaded = load_checkpoint(tmp_path / "a" / "ck.pt")
    assert loaded["iteration"] == 7 and loaded["config"] == state["config"]
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["ck.pt"]  # no temporary left


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"iteration": 1})

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")
    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"iteration": 2, "bad": Unsaveable()})
    assert load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_partial_writes_of_a_killed_run_are_removed(tmp_path):
    from spoco.training.checkpoint import remove_partial_checkpoints

    save_checkpoint(tmp_path / "last.pt", {"iteration": 1})
    for name in ("last.pt.k3j9x.tmp", "best.pt.a1.tmp", "notes.tmp"):  # a kill during torch.save leaves these
        (tmp_path / name).write_bytes(b"PK")
    remove_partial_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "notes.tmp"]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_tampered_file_does_not_execute_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"format": "spoco-checkpoint-1", "payload": _Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a readable spoco checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Exploit(), protocol=2))
    with pytest.raises(ValueError, match="not a readable spoco checkpoint"):
        load_checkpoint(tmp_path / "evil.pkl")
    assert not (tmp_path / "pwned").exists()


def test_corrupt_and_foreign_files(tmp_path):
    save_checkpoint(tmp_path / "ck.pt", {"iteration": 3})
    data = (tmp_path / "ck.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable spoco checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a spoco checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("content", [b"hello", b"", b"PK\x03\x04 truncated zip", bytes(range(256))])
def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path, content):
    path = tmp_path / "not_a_checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not_a_checkpoint.pt is not a"):
        load_checkpoint(path)
