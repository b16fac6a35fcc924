"""Test-stage evaluation (configs/callbacks/evaluation.yaml): intervals, chance, probes and linear baselines beside the
module's test retrieval, logged under `test/` like it.

At the end of the test epoch HeldOutEvaluation embeds the training and test subjects with the tested model (eval
transforms and mode, the datamodule's own loaders), keeping for each subject the encoders' outputs (captured by
forward pre-hooks on the heads: the raw features the heads read, computed by the encoders or read from the
frozen-feature cache), the two unit embeddings and the fused one (fusion.model.fuse), and
the manifest covariates (fusion.data.PairedDataset). Then (library code in fusion.evaluation):
  test/g2b/R@1_lo, test/g2b/R@1_hi, ...  95% bootstrap interval over test subjects (retrieval.retrieval_statistics)
  test/shuffled/g2b/R@1, ...             the same model on shuffled test pairs, mean of `n_permutations`
  test/probe/<covariate>/<embedding>/<score>  linear probes (probes.linear_probes), embeddings genomics, brain, fused,
                                         genomics_encoder, brain_encoder; fit on train, cross-validated there
  test/cca/g2b/R@1, test/pls/..., ...    PCA-CCA and PLS between the encoders' outputs (linear.linear_baseline)
The point estimates (test/g2b/R@1, ...) stay the module's (fusion.app.module); the callback's own re-embedding of the
test split gives the same numbers, which a test checks. With trainer.fast_dev_run the callback, like Lightning, takes
only that many batches of each split. Under DDP rank 0 computes (on the whole of each split) and broadcasts the values;
every rank logs them. The encoders' outputs are the tested encoders': the raw inputs' features for the fixed baselines
(k-mer, dosage, FC) and frozen encoders, the fine-tuned features for encoders trained with the heads.
"""

from __future__ import annotations

import logging
import math
import time

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import move_data_to_device
from threadpoolctl import threadpool_limits

from fusion.evaluation.linear import METHODS, linear_baseline
from fusion.evaluation.probes import linear_probes
from fusion.evaluation.retrieval import retrieval_statistics
from fusion.metrics import DIRECTIONS
from fusion.model import fuse

log = logging.getLogger(__name__)

EMBEDDINGS = ("genomics", "brain", "fused", "genomics_encoder", "brain_encoder")  # collected per subject, probed


@torch.no_grad()
def collect(net, loader, max_batches: float, dataset, context) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Run `net` (fusion.model.AlignmentModel) over `loader` -> ({name in EMBEDDINGS: (N, d) float32}, covariates
    (N rows, the loader's order)). `context` is the precision plugin's forward context (bf16 on GPU)."""
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        tower.head.register_forward_pre_hook(lambda _m, args, key=key: captured.__setitem__(key, args[0]))
        for key, tower in (("genomics_encoder", net.genomics), ("brain_encoder", net.brain))
    ]
    rows: dict[str, list] = {k: [] for k in EMBEDDINGS}
    index: list[int] = []
    device = next(net.parameters()).device
    try:
        for i, batch in enumerate(loader):
            if i >= max_batches:
                break
            with context():
                inputs = move_data_to_device((batch["genomics"], batch["brain"]), device)  # tensors or dicts of them
                z = net(*inputs)  # {"genomics": (B, D), "brain": (B, D)}
            z["fused"] = fuse(z["genomics"].float(), z["brain"].float())
            for key in EMBEDDINGS:
                value = captured[key] if key.endswith("_encoder") else z[key]
                rows[key].append(value.float().reshape(len(value), -1).cpu())
            index += [int(j) for j in batch["index"]]
    finally:
        for hook in hooks:
            hook.remove()
    features = {k: torch.cat(v).numpy() for k, v in rows.items() if v}
    covariates = pd.DataFrame([dataset.covariates[j] for j in index], index=range(len(index)))
    return features, covariates


def logged_by_module(name: str) -> bool:
    """The point estimates (n, g2b/R@1, b2g/median_rank, ...): fusion.app.module logs them; the callback must not."""
    return name == "n" or (name.split("/")[0] in DIRECTIONS and not name.endswith(("_lo", "_hi")))


class HeldOutEvaluation(L.Callback):
    """Intervals, shuffled-pairing chance, linear probes and CCA/PLS baselines at the end of the test epoch."""

    def __init__(
        self,
        n_resamples: int = 1000,  # bootstrap resamples of the test subjects (0 = no interval)
        level: float = 0.95,  # interval coverage
        n_permutations: int = 10,  # shuffled-pairing permutations averaged (0 = no baseline)
        probes: bool = True,  # linear probes of every embedding on every manifest covariate
        linear_baselines: tuple[str, ...] = METHODS,  # classical baselines on the encoders' outputs: cca, pls
        seed: int = 0,  # seeds bootstrap, permutations, folds
        blas_threads: int | None = 1,  # BLAS threads for the small scikit-learn fits (None = library default)
    ):
        unknown = set(linear_baselines) - set(METHODS)
        if unknown:
            raise ValueError(f"callbacks.evaluation.linear_baselines: unknown {sorted(unknown)}; choose from {METHODS}")
        self.n_resamples, self.level, self.n_permutations = n_resamples, level, n_permutations
        self.probes, self.linear_baselines, self.seed = probes, tuple(linear_baselines), seed
        self.blas_threads = blas_threads
        self.results: dict[str, float] = {}  # the last test's values (without the "test/" prefix), point estimates too

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        start = time.perf_counter()
        values = self.evaluate(trainer, pl_module) if trainer.is_global_zero else None
        log.info("test-stage evaluation: %d values in %.1f s", len(values or {}), time.perf_counter() - start)
        values = trainer.strategy.broadcast(values, src=0)
        self.results = values
        logged = {k: v for k, v in values.items() if not logged_by_module(k)}
        pl_module.log_dict({f"test/{k}": float(v) for k, v in logged.items()}, sync_dist=False)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        datamodule = trainer.datamodule
        datamodule.setup()
        limit = trainer.num_test_batches[0] if trainer.num_test_batches else math.inf
        fast = int(trainer.fast_dev_run) if trainer.fast_dev_run else math.inf
        context = trainer.precision_plugin.forward_context
        split = {}
        for name, max_batches in (("train", fast), ("test", limit)):
            loader = datamodule.predict_loader(name)
            split[name] = collect(pl_module.net, loader, max_batches, datamodule.datasets[name], context)
        (train, cov_train), (test, cov_test) = split["train"], split["test"]
        with threadpool_limits(self.blas_threads, user_api="blas"):
            return self._scores(train, test, cov_train, cov_test, datamodule.cohort.covariates)

    def _scores(self, train, test, cov_train, cov_test, kinds) -> dict[str, float]:
        stats = retrieval_statistics(
            test["genomics"], test["brain"], n_resamples=self.n_resamples, level=self.level,
            n_permutations=self.n_permutations, seed=self.seed,
        )  # fmt: skip
        out = dict(stats)
        if self.probes and kinds:
            out |= linear_probes(train, test, cov_train, cov_test, kinds, seed=self.seed)
        for method in self.linear_baselines:
            try:
                out |= linear_baseline(
                    method, train["genomics_encoder"], train["brain_encoder"], test["genomics_encoder"],
                    test["brain_encoder"], seed=self.seed, n_resamples=self.n_resamples, level=self.level,
                )  # fmt: skip
            except ValueError as err:
                log.warning("%s baseline skipped: %s", method, err)
        return out
