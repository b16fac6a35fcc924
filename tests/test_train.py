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
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from fusion.train import CONFIG_DIR, train

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
TINY_DEMO = [  # a small demo cohort: 16 subjects, 100 volumes, 4 regions of ~300 bp
    "demo.n_subjects=16",
    "demo.n_volumes=100",
    "demo.n_regions=4",
    "demo.region_length=300",
    "demo.region_length_jitter=20",
    "demo.variants_per_region=8",
    "demo.n_factors=2",
    "demo.split_fractions=[0.5,0.25,0.25]",
    "data.batch_size=4",
    "data.eval_batch_size=4",
]


def compose_train(tmp_path: Path, cache: Path, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=TINY_DEMO + overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # resolves ${hydra:runtime.output_dir} as in a real run
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.log_dir = str(tmp_path / "logs")
        cfg.paths.cache_dir = str(cache)
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
        del cfg.hydra
    return cfg


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # the tiny demo cohort is generated once and reused


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_fast_dev_run(experiment, tmp_path, cache):
    overrides = [f"experiment={experiment}", "+trainer.fast_dev_run=true", "logger=csv"]
    if experiment == "demo_caduceus":
        overrides.append("genomics.encoder.pretrain.steps=3")
    cfg = compose_train(tmp_path, cache, overrides)
    metrics, objs = train(cfg)
    assert np.isfinite(metrics["train/loss"])
    assert {"test/g2b/R@1", "test/b2g/R@1", "test/g2b/median_rank"} <= set(metrics)
    assert 0 <= metrics["test/g2b/R@1"] <= 1 and 1 <= metrics["test/b2g/mean_rank"] <= 4
    assert (tmp_path / "run" / "config_resolved.yaml").exists()


@pytest.mark.parametrize("brain", ["brainlm_mae_tiny", "brainlm_vitmae_tiny", "swift_tiny", "brainmt_tiny"])
def test_brain_encoders_run_in_the_demo(brain, tmp_path, cache):
    cfg = compose_train(tmp_path, cache, [f"brain={brain}", "+trainer.fast_dev_run=true"])
    metrics, _ = train(cfg)
    assert np.isfinite(metrics["train/loss"]) and "test/b2g/R@1" in metrics


def test_resume_continues_from_checkpoint_and_export_writes_parquet(tmp_path, cache):
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
        assert list(table.columns) == ["subject_id", "split", "genomics", "brain", "fused", "age", "sex", "site"]
        cohort = objs["datamodule"].cohort.subjects.set_index("subject_id")
        assert np.allclose(table["age"], cohort.loc[table["subject_id"], "age"])  # covariates travel with the rows
        assert len(table) == sizes[split] and set(table["split"]) == {split}
        g, b, f = (np.stack(table[c].to_numpy()) for c in ("genomics", "brain", "fused"))
        assert g.shape == b.shape == f.shape == (sizes[split], 512)
        assert np.allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)
        expected = (g + b) / np.linalg.norm(g + b, axis=1, keepdims=True)
        assert np.allclose(f, expected, atol=1e-5)
    prov = json.loads((run / "export" / "provenance.json").read_text())
    assert len(prov["checkpoint_sha256"]) == 64 and prov["config"]["data"]["manifest"].endswith("manifest.csv")
    again = export(ckpt, out_dir=tmp_path / "again")  # deterministic evaluation transforms: identical export
    a = np.stack(pq.read_table(written["test"]).to_pandas()["fused"].to_numpy())
    b = np.stack(pq.read_table(again["test"]).to_pandas()["fused"].to_numpy())
    assert np.array_equal(a, b)


def test_user_cohort_needs_every_file(tmp_path, cache):
    cfg = compose_train(tmp_path, cache, ["data.manifest=/nowhere/manifest.csv"])
    with pytest.raises(ValueError, match="data.vcf"):
        train(cfg)


def test_demo_training_loss_falls(tmp_path, cache):
    """A short real run on the tiny cohort: the epoch training loss falls."""
    cfg = compose_train(tmp_path, cache, ["trainer.max_epochs=6", "test=false", "logger=csv"])
    torch.manual_seed(0)
    _, objs = train(cfg)
    import pandas as pd

    log = pd.read_csv(next((tmp_path / "run" / "csv").rglob("metrics.csv")))
    losses = log["train/loss_epoch"].dropna().to_numpy()
    assert len(losses) == 6 and losses[-2:].mean() < losses[:2].mean()


def test_wandb_logger_runs_offline_without_account(tmp_path, cache, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    overrides = ["logger=many", "trainer.max_epochs=1", "+trainer.limit_train_batches=1", "test=false"]
    cfg = compose_train(tmp_path, cache, overrides)  # fast_dev_run would swap loggers for a dummy
    train(cfg)
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*")), "wandb wrote no offline run"


def test_scans_shorter_than_the_window_are_reported_before_training(tmp_path, cache):
    cfg = compose_train(tmp_path, cache, ["brain=brainlm_mae_tiny", "brain.transform.window=120"])
    with pytest.raises(ValueError, match="100 volumes, fewer than the brain encoder's window of 120"):
        train(cfg)


@pytest.mark.slow
def test_ddp_spawn_on_two_cpu_processes(tmp_path, cache):
    """DDP code path on CPU: gathered loss, metrics synced over ranks, each test subject counted once."""
    cfg = compose_train(tmp_path, cache, ["trainer=ddp_cpu", "trainer.max_epochs=1"])
    metrics, objs = train(cfg)
    assert objs["trainer"].world_size == 2
    assert metrics["test/n"] == objs["datamodule"].split_sizes()["test"]
    assert np.isfinite(metrics["train/loss"]) and 0 <= metrics["test/g2b/R@1"] <= 1


def test_cohort_read_once_drives_transforms_and_config_split_fractions(tmp_path, cache):
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
