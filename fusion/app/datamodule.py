"""LightningDataModule over a cohort on disk: validates it once, then serves paired subjects per split.

The cohort (manifest + VCF + reference + regions + atlas) is loaded and checked in __init__, before compute is spent;
problems are reported all at once (fusion.cohort). Training uses random windows (drop_last so every contrastive batch
has the same size); validation/test use the deterministic evaluation windows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lightning as L
import nibabel as nib
from torch.utils.data import DataLoader

from fusion.cohort import CohortError, load_cohort
from fusion.data import EpochSampler, PairedDataset

SPLITS = ("train", "val", "test")


class AlignmentDataModule(L.LightningDataModule):
    def __init__(
        self,
        manifest: str,
        vcf: str,
        reference: str,
        regions: str,
        atlas: str,
        atlas_coords: str | None,
        genomics_transform: Callable,
        brain_transform: Callable,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        strict: bool = False,
        **_: object,  # derived keys of the data group (n_regions, n_parcels) are for the encoders, not for us
    ):
        super().__init__()
        self.cohort, self.report = load_cohort(manifest, vcf, reference, regions, atlas, atlas_coords, strict=strict)
        self.genomics_transform, self.brain_transform = genomics_transform, brain_transform
        self._exclude_short_scans(strict)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.seed = num_workers, seed
        self.datasets = {split: self._dataset(split) for split in SPLITS}
        if len(self.datasets["train"]) < batch_size:
            raise ValueError(
                f"{manifest}: {len(self.datasets['train'])} training subjects, fewer than batch_size={batch_size}; "
                f"lower data.batch_size or add subjects\n{self.report.summary()}"
            )

    def _exclude_short_scans(self, strict: bool) -> None:
        """Scans with fewer volumes than the brain transform's window are excluded (and reported) before training."""
        window = getattr(self.brain_transform, "window", None)
        if not window:
            return
        subjects = self.cohort.subjects
        frames = [nib.load(path).shape[3] for path in subjects["fmri"]]  # headers only
        short = [n < window for n in frames]
        for (sid, path), n, bad in zip(subjects[["subject_id", "fmri"]].itertuples(index=False), frames, short):
            if bad:
                self.report.excluded[sid] = f"{path}: {n} volumes, fewer than the brain encoder's window of {window}"
        if any(short):
            if strict:
                raise CohortError(self.report.summary(), self.report)
            self.cohort.subjects = subjects[[not b for b in short]].reset_index(drop=True)

    def _dataset(self, split: str) -> PairedDataset:
        rows = self.cohort.subjects[self.cohort.subjects["split"] == split]
        return PairedDataset(
            rows["subject_id"].astype(str).tolist(),
            rows["fmri"].astype(str).tolist(),
            self.genomics_transform,
            self.brain_transform,
            train=split == "train",
            seed=self.seed,
        )

    def split_sizes(self) -> dict[str, int]:
        return {split: len(ds) for split, ds in self.datasets.items()}

    def fit_inputs(self) -> Iterator[dict]:
        """Training subjects with evaluation transforms, for data-fitted encoders (e.g. tangent connectivity)."""
        ds = self._dataset("train")
        ds.train = False
        return (ds[i] for i in range(len(ds)))

    def _loader(self, split: str, batch_size: int, sampler=None, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self):
        sampler = EpochSampler(len(self.datasets["train"]), seed=self.seed)
        return self._loader("train", self.batch_size, sampler=sampler, drop_last=True)

    def val_dataloader(self):
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self):
        return self._loader("test", self.eval_batch_size)

    def predict_loader(self, split: str) -> DataLoader:
        """Evaluation-mode loader over any split (used by export)."""
        return self._loader(split, self.eval_batch_size)
