"""The training data order: one permutation per epoch, fixed by the seed and the epoch,
that a resumed run can enter in the middle without loading the batches it skips."""
from __future__ import annotations

import itertools

import torch
from torch.utils.data import DistributedSampler, Sampler


class EpochSampler(Sampler[int]):
    """The indices of epoch ``epoch`` of a dataset of ``n`` items, in the order of a
    permutation drawn from ``seed + epoch``, from position ``start`` on.

    Every run (fresh or resumed) draws the same permutation for an epoch, so skipping
    the ``start`` indices that an interrupted run already trained on continues the
    uninterrupted order exactly.
    """

    def __init__(self, n: int, *, seed: int, epoch: int, start: int = 0):
        self.n, self.seed, self.epoch, self.start = int(n), int(seed), int(epoch), int(start)

    def __iter__(self):
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        return iter(perm[self.start:].tolist())

    def __len__(self) -> int:
        return max(0, self.n - self.start)


class ResumableDistributedSampler(DistributedSampler):
    """:class:`torch.utils.data.DistributedSampler` (this process's share of the epoch's
    permutation) that starts at position ``start`` of that share; ``kw``:
    ``num_replicas``, ``rank`` (default: those of the process group)."""

    def __init__(self, dataset, *, seed: int, epoch: int, start: int = 0, drop_last: bool = True, **kw):
        super().__init__(dataset, seed=seed, drop_last=drop_last, **kw)
        self.set_epoch(epoch)
        self.start = int(start)

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return max(0, super().__len__() - self.start)
