"""LightningDataModule over a loaded Cohort (fusion.cohort): serves paired subjects per split.

The cohort is loaded and checked before this is built (fusion.app.build), so compute is never spent on a bad cohort;
datasets are made in `setup`. Training uses random windows (drop_last so every contrastive batch has the same size);
validation/test use the deterministic evaluation windows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lightning as L
from torch.utils.data import DataLoader

from fusion.cohort import SPLITS, Cohort
from fusion.data import EpochSampler, PairedDataset


class AlignmentDataModule(L.LightningDataModule):
    def __init__(
        self,
        cohort: Cohort,
        genomics_transform: Callable,
        brain_transform: Callable,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.cohort = cohort
        self.genomics_transform, self.brain_transform = genomics_transform, brain_transform
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.seed = num_workers, seed
        self.datasets: dict[str, PairedDataset] = {}
        n_train = int((cohort.subjects["split"] == "train").sum())
        if n_train < batch_size:
            raise ValueError(
                f"{cohort.manifest}: {n_train} training subjects, fewer than batch_size={batch_size}; "
                "lower data.batch_size or add subjects"
            )

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:
            self.datasets = {split: self._dataset(split) for split in SPLITS}

    def _dataset(self, split: str, train: bool | None = None) -> PairedDataset:
        rows = self.cohort.subjects[self.cohort.subjects["split"] == split]
        return PairedDataset(
            rows,
            self.genomics_transform,
            self.brain_transform,
            covariates=list(self.cohort.covariates),
            train=split == "train" if train is None else train,
            seed=self.seed,
        )

    def split_sizes(self) -> dict[str, int]:
        return {split: int((self.cohort.subjects["split"] == split).sum()) for split in SPLITS}

    def fit_inputs(self) -> Iterator[dict]:
        """Training subjects with evaluation transforms, for data-fitted encoders (e.g. tangent connectivity)."""
        ds = self._dataset("train", train=False)
        return (ds[i] for i in range(len(ds)))

    def _loader(self, split: str, batch_size: int, sampler=None, drop_last: bool = False) -> DataLoader:
        self.setup()
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self):
        sampler = EpochSampler(self.split_sizes()["train"], seed=self.seed)
        return self._loader("train", self.batch_size, sampler=sampler, drop_last=True)

    def val_dataloader(self):
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self):
        return self._loader("test", self.eval_batch_size)

    def predict_loader(self, split: str) -> DataLoader:
        """Evaluation-mode loader over any split (used by export)."""
        return self._loader(split, self.eval_batch_size)
