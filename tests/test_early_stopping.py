"""Model selection on validation (configs/callbacks/default.yaml): EarlyStopping follows the checkpoint's monitor, the
kept checkpoint is the best epoch's, and `best_epoch` reports it (fusion.app.selection.SelectedEpoch)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fusion.train import train


def epoch_log(run_dir, monitor: str) -> pd.DataFrame:
    """One row per trained epoch (its validation metrics and the logged best_epoch); the test rows left out."""
    log = pd.read_csv(next((run_dir / "csv").rglob("metrics.csv")))
    per_epoch = log[[c for c in log.columns if not c.startswith("test/")]].groupby("epoch").max()
    return per_epoch[per_epoch[monitor].notna()]


def test_early_stopping_selects_and_reports_the_best_validation_epoch(tmp_path, demo_cache, train_config):
    monitor, patience, max_epochs = "val/g2b/mean_rank", 2, 8
    overrides = [
        f"optimized_metric={monitor}",
        "callbacks.model_checkpoint.mode=min",
        f"callbacks.early_stopping.patience={patience}",
        f"trainer.max_epochs={max_epochs}",
        "model.optimizer.lr=3e-3",
    ]
    cfg = train_config(tmp_path, demo_cache, overrides)
    assert cfg.callbacks.early_stopping.monitor == monitor and cfg.callbacks.early_stopping.mode == "min"
    metrics, objs = train(cfg)
    per_epoch = epoch_log(tmp_path / "run", monitor)
    scores = per_epoch[monitor].to_numpy()
    best = int(np.argmin(scores))  # first epoch with the lowest value: later ties are no improvement
    ran = len(scores)
    assert ran == min(max_epochs, best + patience + 1)  # stopped `patience` validations after the best one
    assert metrics["best_epoch"] == best and per_epoch["best_epoch"].iloc[-1] == best
    kept = objs["trainer"].checkpoint_callback.best_model_path
    assert kept.endswith(f"epoch_{best:03d}.ckpt")
    assert np.isclose(float(objs["trainer"].checkpoint_callback.best_model_score), scores[best])
    assert "test/g2b/R@1" in metrics  # the test ran on that checkpoint


def test_the_demo_stops_early_by_default(tmp_path, demo_cache, train_config):
    """On the tiny cohort (4 validation subjects) val/g2b/R@5 is 1.0 from the first epoch: no later epoch improves, so
    the default patience ends the run after patience + 1 epochs and keeps epoch 0."""
    cfg = train_config(tmp_path, demo_cache, ["test=false"])
    patience = cfg.callbacks.early_stopping.patience
    assert cfg.callbacks.early_stopping.monitor == cfg.optimized_metric == "val/g2b/R@5"
    assert cfg.trainer.max_epochs > patience + 1
    metrics, objs = train(cfg)
    assert objs["trainer"].current_epoch == patience + 1 and metrics["best_epoch"] == 0
