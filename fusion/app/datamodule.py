"""LightningDataModule over a loaded Cohort (fusion.cohort): serves paired subjects per split.

The cohort is loaded and checked before this is built (fusion.app.build), so compute is never spent on a bad cohort;
datasets are made in `setup`. Training uses random windows (drop_last so every contrastive batch has the same size);
validation/test use the deterministic evaluation windows. Resumable mid-epoch: state_dict() records the training
batches done in the current epoch and a resumed run's sampler starts after them (single process; under DDP the epoch
restarts, with Lightning's warning). Every loader has its own generator, so creating one never draws from the global
random stream (fusion.app.resilience.ExactResume restores it).

With a frozen-feature cache attached (use_feature_cache, by fusion.app.build), setup() first runs its pre-pass
(fusion.feature_cache) with the towers' current weights, then serves the cached modalities' stored (d,) features in
place of their transforms' outputs, in every split and loader (so fusion.export reads them too).

Batches are collated by torch's default_collate, except the brain inputs when the brain transform has a `collate`
(e.g. brain.parcellation.ParcelTimeSeries: whole scans of different lengths padded with NaN frames), used for them.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from functools import partial

import lightning as L
import torch
from torch.utils.data import DataLoader, default_collate

from fusion.cohort import SPLITS, Cohort
from fusion.data import EpochSampler, PairedDataset
from fusion.errors import FusionInputError

log = logging.getLogger(__name__)


def collate_paired(items: list[dict], brain: Callable | None = None) -> dict:
    """PairedDataset items -> a batch: default_collate, the "brain" entries by `brain` (a transform's collate)."""
    if brain is None:
        return default_collate(items)
    batch = default_collate([{k: v for k, v in item.items() if k != "brain"} for item in items])
    batch["brain"] = brain([item["brain"] for item in items])
    return {k: batch[k] for k in items[0]}  # the items' key order


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
        self._resume: dict | None = None  # from a checkpoint (load_state_dict), used by the next train_dataloader()
        self.feature_cache = None  # fusion.feature_cache.FrozenFeatureCache, or None (use_feature_cache)
        self.features: dict = {}  # modality -> fusion.feature_cache.FeatureTable, after setup()
        n_train = int((cohort.subjects["split"] == "train").sum())
        if n_train < batch_size:
            raise FusionInputError(
                f"{cohort.manifest}: {n_train} training subjects, fewer than batch_size={batch_size}; "
                "lower data.batch_size or add subjects"
            )

    def use_feature_cache(self, cache) -> None:
        """Serve the modalities of `cache` (a FrozenFeatureCache) from stored features, computed at setup()."""
        self.feature_cache = cache

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:
            if self.feature_cache is not None:
                transforms = {"genomics": self.genomics_transform, "brain": self.brain_transform}
                trainer = self.trainer
                device = trainer.strategy.root_device if trainer is not None else None
                self.features = self.feature_cache.prepare(self.cohort, transforms, device=device)
            self.datasets = {split: self._dataset(split) for split in SPLITS}

    def _dataset(self, split: str, train: bool | None = None) -> PairedDataset:
        rows = self.cohort.subjects[self.cohort.subjects["split"] == split]
        return PairedDataset(
            rows,
            self.features.get("genomics", self.genomics_transform),
            self.features.get("brain", self.brain_transform),
            covariates=list(self.cohort.covariates),
            train=split == "train" if train is None else train,
            seed=self.seed,
        )

    def split_sizes(self) -> dict[str, int]:
        return {split: int((self.cohort.subjects["split"] == split).sum()) for split in SPLITS}

    def fit_inputs(self) -> Iterator[dict]:
        """Training subjects with evaluation transforms, for data-fitted encoders (e.g. tangent connectivity)."""
        self.setup()
        ds = self._dataset("train", train=False)
        return (ds[i] for i in range(len(ds)))

    def _loader(self, split: str, batch_size: int, sampler=None, drop_last: bool = False) -> DataLoader:
        self.setup()
        brain = self.features.get("brain", self.brain_transform)  # stored (d,) features need no special collate
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            collate_fn=partial(collate_paired, brain=getattr(brain, "collate", None)),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self):
        sampler = EpochSampler(self.split_sizes()["train"], seed=self.seed)
        state, self._resume = self._resume, None
        done = int(state.get("train_batches_done", 0)) if state else 0
        if 0 < done < self.split_sizes()["train"] // self.batch_size:  # killed mid-epoch
            if self.trainer is not None and self.trainer.world_size > 1:
                log.warning("resuming mid-epoch under DDP: epoch %d restarts from its first batch", state["epoch"])
            else:
                sampler.resume(int(state["epoch"]), done * self.batch_size)
                warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
                log.info("resuming epoch %d after its first %d training batches", state["epoch"], done)
        return self._loader("train", self.batch_size, sampler=sampler, drop_last=True)

    def state_dict(self) -> dict:
        """Saved in every checkpoint: the epoch and the training batches done in it (where a resume continues)."""
        trainer = self.trainer
        if trainer is None:
            return {}
        loop = trainer.fit_loop
        return {
            "epoch": int(loop.epoch_progress.current.processed),
            "train_batches_done": int(loop.epoch_loop.batch_progress.current.processed),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume = dict(state_dict)

    def val_dataloader(self):
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self):
        return self._loader("test", self.eval_batch_size)

    def predict_loader(self, split: str) -> DataLoader:
        """Evaluation-mode loader over any split (used by export)."""
        return self._loader(split, self.eval_batch_size)
