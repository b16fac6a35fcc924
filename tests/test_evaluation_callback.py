"""The test-stage evaluation callback (configs/callbacks/evaluation.yaml) in a real tiny training run, and the library's
independence from the application."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fusion.app.evaluation import HeldOutEvaluation
from fusion.train import train


def test_callback_logs_intervals_chance_probes_and_baselines(tmp_path, demo_cache, train_config):
    cfg = train_config(tmp_path, demo_cache, ["trainer.max_epochs=1", "callbacks.evaluation.n_resamples=200"])
    metrics, objs = train(cfg)
    (callback,) = [c for c in objs["trainer"].callbacks if isinstance(c, HeldOutEvaluation)]
    n = objs["datamodule"].split_sizes()["test"]
    assert metrics["test/n"] == callback.results["n"] == n
    for direction in ("g2b", "b2g"):
        for k in ("R@1", "R@5", "R@10", "mean_rank", "median_rank"):
            point = metrics[f"test/{direction}/{k}"]
            assert callback.results[f"{direction}/{k}"] == pytest.approx(point, abs=1e-6)  # same subjects, same model
            assert metrics[f"test/{direction}/{k}_lo"] <= point <= metrics[f"test/{direction}/{k}_hi"]
            assert f"test/shuffled/{direction}/{k}" in metrics
        for method in ("cca", "pls"):
            assert 0 <= metrics[f"test/{method}/{direction}/R@1"] <= 1
    assert 1 <= metrics["test/shuffled/g2b/mean_rank"] <= n
    probes = {k for k in metrics if k.startswith("test/probe/age/")}
    embeddings = ("genomics", "brain", "fused", "genomics_encoder", "brain_encoder")
    assert probes == {f"test/probe/age/{e}/r2" for e in embeddings}
    assert all(np.isfinite(metrics[k]) for k in probes)


def test_evaluation_can_be_turned_off(tmp_path, demo_cache, train_config):
    cfg = train_config(tmp_path, demo_cache, ["+trainer.fast_dev_run=true", "callbacks=default"])
    metrics, objs = train(cfg)
    assert not any(isinstance(c, HeldOutEvaluation) for c in objs["trainer"].callbacks)
    assert "test/g2b/R@1" in metrics and "test/g2b/R@1_lo" not in metrics


def test_unknown_baseline_is_refused():
    with pytest.raises(ValueError, match="unknown"):
        HeldOutEvaluation(linear_baselines=("cca", "ica"))


def test_library_imports_without_lightning_or_hydra():
    code = (
        "import sys, fusion.evaluation.retrieval, fusion.evaluation.probes, fusion.evaluation.linear; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'hydra', 'pytorch_lightning')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_callback_under_ddp_spawn_on_two_cpu_processes(tmp_path, demo_cache, train_config):
    """Rank 0 evaluates and broadcasts: every rank logs the same values, the run ends, the values come back."""
    cfg = train_config(tmp_path, demo_cache, ["trainer=ddp_cpu", "trainer.max_epochs=1"])
    metrics, objs = train(cfg)
    assert objs["trainer"].world_size == 2 and metrics["test/n"] == objs["datamodule"].split_sizes()["test"]
    assert metrics["test/g2b/R@1_lo"] <= metrics["test/g2b/R@1"] <= metrics["test/g2b/R@1_hi"]
    assert 0 <= metrics["test/cca/b2g/R@1"] <= 1 and "test/shuffled/g2b/R@1" in metrics
    assert "test/probe/age/fused/r2" in metrics
