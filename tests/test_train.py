"""End-to-end through Hydra: every experiment file composes and runs fast_dev_run on CPU; resume; export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from fusion.train import CONFIG_DIR, train

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


def model_target(experiment: str) -> str:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[f"experiment={experiment}"]).model._target_


# the alignment experiments; those that swap the model group (MLM pretraining) run in their own test file
ALIGNMENT = [e for e in EXPERIMENTS if model_target(e) == "fusion.app.module.AlignmentModule"]


@pytest.fixture
def cache(demo_cache):
    return demo_cache  # the tiny demo cohort, generated once per session (tests/conftest.py)


@pytest.fixture
def compose_train(train_config):
    return train_config  # the real train.yaml with the tiny demo overrides (tests/conftest.py)


@pytest.mark.parametrize("experiment", ALIGNMENT)
def test_every_experiment_runs_fast_dev_run(experiment, tmp_path, cache, compose_train):
    overrides = [f"experiment={experiment}", "+trainer.fast_dev_run=true", "logger=csv"]
    if experiment == "demo_caduceus":
        overrides.append("genomics.pretrain.data.steps=3")
    cfg = compose_train(tmp_path, cache, overrides)
    metrics, objs = train(cfg)
    assert np.isfinite(metrics["train/loss"]) and metrics["train/loss"] >= 0
    assert 1.0 <= metrics["train/logit_scale"] <= 100.0  # exp of the log scale clamped to [0, ln 100]
    sizes, batch = objs["datamodule"].split_sizes(), cfg.data.eval_batch_size
    for stage in ("val", "test"):  # fast_dev_run: one evaluation batch per stage
        n = metrics[f"{stage}/n"]
        assert n == min(batch, sizes[stage]) and n >= 2
        assert np.isfinite(metrics[f"{stage}/loss"])
        for direction in ("g2b", "b2g"):
            m = {k: metrics[f"{stage}/{direction}/{k}"] for k in ("R@1", "R@5", "R@10", "mean_rank", "median_rank")}
            assert 0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= 1, m
            if n <= 5:
                assert m["R@5"] == 1.0  # every rank is at most n
            assert 1 <= m["mean_rank"] <= n and 1 <= m["median_rank"] <= n, m
            assert (m["R@1"] == 1) == (m["mean_rank"] == 1), m
    assert (tmp_path / "run" / "config_resolved.yaml").exists()


@pytest.mark.parametrize("brain", ["brainlm_mae_tiny", "brainlm_vitmae_tiny", "swift_tiny", "brainmt_tiny"])
def test_brain_encoders_run_in_the_demo(brain, tmp_path, cache, compose_train):
    cfg = compose_train(tmp_path, cache, [f"brain={brain}", "+trainer.fast_dev_run=true"])
    metrics, _ = train(cfg)
    assert np.isfinite(metrics["train/loss"]) and "test/b2g/R@1" in metrics


def test_resume_continues_from_checkpoint_and_export_writes_parquet(tmp_path, cache, compose_train):
    first = compose_train(tmp_path / "a", cache, ["trainer.max_epochs=1", "test=false"])
    metrics, objs = train(first)
    ckpt = tmp_path / "a" / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.exists() and objs["trainer"].global_step == 2  # 8 train subjects / batch 4

    resumed = compose_train(tmp_path / "a", cache, ["trainer.max_epochs=2", f"ckpt_path={ckpt}"])
    _, objs = train(resumed)
    assert objs["trainer"].current_epoch == 2 and objs["trainer"].global_step == 4  # continued, not restarted

    from fusion.export import export

    written = export(ckpt)
    run = tmp_path / "a" / "run"
    sizes = objs["datamodule"].split_sizes()
    for split in ("train", "val", "test"):
        table = pq.read_table(written[split]).to_pandas()
        columns = ["subject_id", "split", "trained_on", "genomics", "brain", "fused", "age", "sex", "site"]
        assert list(table.columns) == columns
        assert (table["trained_on"] == (split == "train")).all()  # the model saw exactly the training split
        cohort = objs["datamodule"].cohort.subjects.set_index("subject_id")
        assert np.allclose(table["age"], cohort.loc[table["subject_id"], "age"])  # covariates travel with the rows
        assert len(table) == sizes[split] and set(table["split"]) == {split}
        g, b, f = (np.stack(table[c].to_numpy()) for c in ("genomics", "brain", "fused"))
        assert g.shape == b.shape == f.shape == (sizes[split], first.model.embed_dim) and first.model.embed_dim == 512
        assert np.allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)
        expected = (g + b) / np.linalg.norm(g + b, axis=1, keepdims=True)
        assert np.allclose(f, expected, atol=1e-5)
    prov = json.loads((run / "export" / "provenance.json").read_text())
    assert len(prov["checkpoint_sha256"]) == 64 and prov["config"]["data"]["manifest"].endswith("manifest.csv")
    again = export(ckpt, out_dir=tmp_path / "again")  # deterministic evaluation transforms: identical export
    a = np.stack(pq.read_table(written["test"]).to_pandas()["fused"].to_numpy())
    b = np.stack(pq.read_table(again["test"]).to_pandas()["fused"].to_numpy())
    assert np.array_equal(a, b)


def test_user_cohort_needs_every_file(tmp_path, cache, compose_train):
    cfg = compose_train(tmp_path, cache, ["data.manifest=/nowhere/manifest.csv"])
    with pytest.raises(ValueError, match="data.vcf"):
        train(cfg)


def test_demo_training_loss_falls(tmp_path, cache, compose_train):
    """A short real run on the tiny cohort: the epoch training loss falls."""
    cfg = compose_train(tmp_path, cache, ["trainer.max_epochs=6", "test=false", "logger=csv"])
    torch.manual_seed(0)
    _, objs = train(cfg)
    import pandas as pd

    log = pd.read_csv(next((tmp_path / "run" / "csv").rglob("metrics.csv")))
    losses = log["train/loss_epoch"].dropna().to_numpy()
    assert len(losses) == 6 and losses[-2:].mean() < losses[:2].mean()


def test_wandb_logger_runs_offline_without_account(tmp_path, cache, monkeypatch, compose_train):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    overrides = ["logger=many", "trainer.max_epochs=1", "+trainer.limit_train_batches=1", "test=false"]
    cfg = compose_train(tmp_path, cache, overrides)  # fast_dev_run would swap loggers for a dummy
    train(cfg)
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*")), "wandb wrote no offline run"


def test_scans_shorter_than_the_window_are_reported_before_training(tmp_path, cache, compose_train):
    cfg = compose_train(tmp_path, cache, ["brain=brainlm_mae_tiny", "brain.transform.window=120"])
    with pytest.raises(ValueError, match="100 volumes, fewer than the brain encoder's window of 120"):
        train(cfg)


@pytest.mark.slow
def test_ddp_spawn_on_two_cpu_processes(tmp_path, cache, compose_train):
    """DDP code path on CPU: gathered loss, metrics synced over ranks, each test subject counted once."""
    cfg = compose_train(tmp_path, cache, ["trainer=ddp_cpu", "trainer.max_epochs=1"])
    metrics, objs = train(cfg)
    assert objs["trainer"].world_size == 2
    assert metrics["test/n"] == objs["datamodule"].split_sizes()["test"]
    assert np.isfinite(metrics["train/loss"]) and 0 <= metrics["test/g2b/R@1"] <= 1


def test_cohort_read_once_drives_transforms_and_config_split_fractions(tmp_path, cache, compose_train):
    """strict=false with a bad BED line: the region the cohort check excluded is absent from the report's count and
    from the transform's output, and training runs; without a split column, data.split_fractions splits the cohort."""
    from fusion.app.build import build
    from fusion.app.cohort_source import resolve_cohort

    demo = compose_train(tmp_path, cache, [])
    resolve_cohort(demo)  # the tiny demo cohort's files
    bed = tmp_path / "regions.bed"
    good = Path(demo.data.regions).read_text()
    bed.write_text(good + "chr1\t500\t400\tbackwards\n")
    manifest = pd.read_csv(demo.data.manifest).drop(columns="split")
    manifest["fmri"] = [str(Path(demo.data.manifest).parent / f) for f in manifest["fmri"]]
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    files = [f"data.{k}={demo.data[k]}" for k in ("vcf", "reference", "atlas", "atlas_coords")]
    overrides = [*files, f"data.manifest={tmp_path / 'manifest.csv'}", f"data.regions={bed}", "data.strict=false"]
    cfg = compose_train(tmp_path, cache, [*overrides, "data.split_fractions=[0.75,0.125,0.125]"])
    run = build(cfg)
    n_good = len(good.strip().splitlines())
    assert run.report.n_regions == run.cohort.n_regions == n_good == 4
    assert any("start" in p.message and p.where.endswith(f":{n_good + 1}") for p in run.report.errors)
    assert run.datamodule.genomics_transform(run.cohort.subjects["subject_id"][0]).shape[0] == n_good  # (R, 2, L)
    assert run.report.split_source == "hash of subject_id" and run.datamodule.split_sizes()["train"] >= 8
    metrics, _ = train(compose_train(tmp_path, cache, [*overrides, "+trainer.fast_dev_run=true"]))
    assert np.isfinite(metrics["train/loss"]) and 0 <= metrics["test/g2b/R@1"] <= 1


def test_a_batch_larger_than_the_training_split_is_a_user_error(tmp_path, cache, compose_train):
    from fusion.app.build import build
    from fusion.app.cohort_source import resolve_cohort
    from fusion.errors import FusionInputError

    cfg = compose_train(tmp_path, cache, ["data.batch_size=100000"])
    resolve_cohort(cfg)
    with pytest.raises(FusionInputError, match=r"manifest\.csv: \d+ training subjects, fewer than batch_size=100000"):
        build(cfg)
