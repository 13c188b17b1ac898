"""Size checks before large allocations, and huge ids that must simply work.

A label id like 2**62 is legal, but a table of ``max(id) + 1`` entries for it is
exabytes, and ``np.bincount`` of 2**63 - 1 overflows inside NumPy and corrupts the
heap (the process aborts later, elsewhere). Each place that takes labels renumbers
them first; each place that allocates from a file's header or an argument checks
the size first."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from spoco import _validation
from spoco._labels import compact_ids
from spoco.clustering import merge_close_segments, postprocess, remove_background, remove_small_segments
from spoco.data import io

HUGE = np.array([0, 2 ** 40, 2 ** 53 + 1, 2 ** 62, 2 ** 63 - 1])  # 2**53 + 1 is not a float64


def _pair(seed):
    """The same random partition with small ids (0..4) and with :data:`HUGE` ids."""
    small = np.random.default_rng(seed).integers(0, 5, (12, 12))
    return small, HUGE[small]


def test_compact_ids_keeps_small_ids_and_renumbers_huge_ones_in_order(seed):
    small, huge = _pair(seed)
    assert compact_ids(small) is small  # ids below the pixel count: untouched, no copy
    np.testing.assert_array_equal(compact_ids(huge), small)  # all five ids present: 0..4 in order
    assert compact_ids(np.array(2 ** 62)).shape == ()  # 0-D stays 0-D
    np.testing.assert_array_equal(compact_ids(np.array([7, 2 ** 63 - 1])), [1, 2])  # no 0: ids start at 1


@pytest.mark.parametrize("step", ["remove_small_segments", "remove_background", "merge_close_segments",
                                  "postprocess"])
def test_post_processing_gives_the_same_result_for_huge_ids(seed, step):
    small, huge = _pair(seed)
    emb = np.random.default_rng(seed).standard_normal((2, 12, 12)).astype(np.float32)
    run = {"remove_small_segments": lambda lab: remove_small_segments(lab, 30),
           "remove_background": lambda lab: remove_background(lab, emb, mode="embedding", radius=0.5),
           "merge_close_segments": lambda lab: merge_close_segments(lab, emb, 1.0),
           "postprocess": lambda lab: postprocess(lab, emb, merge_distance=0.5, background="largest", min_size=3)}[step]
    np.testing.assert_array_equal(run(huge), run(small))


def test_augmentation_moves_huge_ids_exactly(seed):
    """Resampling passes values through float64: 2**53 + 1 would become 2**53, and
    2**63 - 1 would overflow to -2**63."""
    from spoco.data.augment import GeometricAugment

    small, huge = _pair(seed)
    image = np.random.default_rng(seed).random((1, 12, 12)).astype(np.float32)
    augment = GeometricAugment(p_elastic=1.0)
    _, got_small = augment(image, small, np.random.default_rng(seed))
    _, got_huge = augment(image, huge, np.random.default_rng(seed))
    np.testing.assert_array_equal(got_huge, HUGE[got_small])


def test_adversarial_object_masks_keep_huge_ids_apart(seed):
    """``label * B + image`` overflowed int64 for ids near 2**63, merging objects of
    different images (or dropping them as negative keys)."""
    from spoco.adversarial import object_mask_patches

    rng = np.random.default_rng(seed)
    small = torch.from_numpy(rng.integers(0, 5, (3, 10, 10)))
    huge = torch.from_numpy(HUGE)[small]
    emb = torch.from_numpy(rng.standard_normal((3, 2, 10, 10)))
    a = object_mask_patches(emb, small, (6, 6), 0.5, generator=torch.Generator().manual_seed(0))
    b = object_mask_patches(emb, huge, (6, 6), 0.5, generator=torch.Generator().manual_seed(0))
    assert b.label.tolist() == HUGE[a.label.numpy()].tolist() and torch.equal(a.image, b.image)
    torch.testing.assert_close(a.fake, b.fake)
    torch.testing.assert_close(a.real, b.real)


def test_read_array_checks_the_declared_size_before_reading(tmp_path, monkeypatch):
    """Any array larger than the machine's memory is refused (here: memory made 1 MiB)."""
    monkeypatch.setattr(_validation, "physical_memory", lambda: 2 ** 20)
    small, big = np.zeros((256, 256), np.uint8), np.zeros((2, 512, 512), np.float32)
    for name, key in (("a.tif", None), ("a.h5", "x"), ("a.zarr", None)):
        io.write_array(tmp_path / name, small, key=key)
        io.write_array(tmp_path / ("big_" + name), big, key=key)
        assert io.read_array(tmp_path / name, key).shape == small.shape
        with pytest.raises(ValueError, match=r"big_a\.\w+.*\(shape \(2, 512, 512\), float32\) needs 0.001953 GiB, "
                                             r"more than this machine's memory \(0.0009766 GiB\)"):
            io.read_array(tmp_path / ("big_" + name), key)


def test_unet_checks_its_size_before_allocating(monkeypatch):
    """Model configs come from checkpoint files: f_maps = 2**20 asks for 10**8 GiB."""
    from spoco.models import UNet

    with pytest.raises(ValueError, match="more than this machine's memory"):
        UNet(2, f_maps=2 ** 20, depth=6)
    with pytest.raises(ValueError, match="depth must be at most 32"):
        UNet(2, depth=10 ** 6)
    monkeypatch.setattr(_validation, "physical_memory", lambda: 2 ** 20)
    UNet(2, f_maps=4, depth=2)  # ~5 KB of weights
    with pytest.raises(ValueError, match=r"a U-Net with 4 levels of 16\.\.128 channels"):
        UNet(2, f_maps=16, depth=4)  # ~2 MB


def test_thread_counts_are_bounded():
    from spoco import threads

    with pytest.raises(ValueError, match=r"threads must be an integer in \[1, 1024\]"):
        threads.set_threads(10 ** 5)


def test_summarize_labels_takes_huge_ids():
    """In a child process: np.bincount of such ids used to corrupt the heap and abort the process."""
    code = textwrap.dedent("""
        import numpy as np
        from spoco.training.recipe import summarize_labels
        print(summarize_labels([np.array([[0, 2**63 - 1], [2**63 - 1, 5]])]).objects)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ["2"], (proc.returncode, proc.stdout, proc.stderr)
