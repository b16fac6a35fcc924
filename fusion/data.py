"""Paired (genotype, fMRI) subjects as a torch Dataset. Library code: no Lightning, no Hydra.

Item: {"index": int, "subject_id": str, "genomics": LongTensor (R, H, L), "brain": FloatTensor (W, ...),
"covariates": {name: value}} (the manifest's covariates: floats, NaN where missing, or strings).
Pairing is by subject id: the genomics transform looks the id up in the VCF, the brain transform reads that subject's
fMRI path from the cohort's subject table. Training indices come from EpochSampler as (index, epoch) pairs; random
choices (training windows) draw from a generator seeded by (seed, epoch, index), so an epoch is reproducible, a resumed
run sees the same windows, and persistent dataloader workers need no epoch broadcast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler


class PairedDataset(Dataset):
    def __init__(
        self,
        subjects: pd.DataFrame,  # rows of Cohort.subjects: subject_id, fmri, then covariates
        genomics_transform: Callable,
        brain_transform: Callable,
        covariates: Sequence[str] = (),  # columns of `subjects` carried into each item
        train: bool = False,
        seed: int = 0,
    ):
        self.subject_ids = subjects["subject_id"].astype(str).tolist()
        self.fmri_paths = subjects["fmri"].astype(str).tolist()
        table = subjects[list(covariates)]
        text = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
        table = table.fillna({c: "" for c in text})  # a missing category is "" (so batches collate), a number NaN
        self.covariates = table.to_dict("records")  # one {name: value} per subject
        self.genomics_transform, self.brain_transform = genomics_transform, brain_transform
        self.train, self.seed = train, seed

    def __len__(self) -> int:
        return len(self.subject_ids)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        sid = self.subject_ids[index]
        rng = np.random.default_rng([self.seed, epoch, index]) if self.train else None
        return {
            "index": index,
            "subject_id": sid,
            "genomics": self.genomics_transform(sid),  # (R, H, L)
            "brain": self.brain_transform(self.fmri_paths[index], train=self.train, rng=rng),  # (W, ...)
            "covariates": self.covariates[index],
        }


class EpochSampler(Sampler):
    """Shuffles indices with a generator seeded by (seed, epoch) and yields (index, epoch) pairs.

    Lightning calls set_epoch() at every epoch start (also after a resume), so the order is a function of the epoch;
    resume(epoch, start) skips the first `start` indices of that epoch's next pass (mid-epoch resume). __len__ stays n
    (Lightning counts the batches already done).
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, start: int) -> None:
        """The next pass over `epoch` starts at position `start` of its order (a run resumed mid-epoch)."""
        self._resume = (epoch, start)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = torch.arange(self.n)
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        resume, self._resume = self._resume, None
        if resume is not None and resume[0] == self.epoch:
            order = order[resume[1] :]
        return iter([(int(i), self.epoch) for i in order])
