"""The frozen-feature cache (fusion.feature_cache): a second run makes no encoder call, results equal the uncached path,
keys follow the input files and settings, damaged shards are ignored, random-window towers are cached only on request.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from brain.connectivity import FunctionalConnectivity
from brain.scans import scan_for
from fusion.app.build import build, build_inputs
from fusion.app.cohort_source import resolve_cohort
from fusion.feature_cache import FrozenFeatureCache, cached_modalities, identity_settings, subject_key
from fusion.train import train
from genomics.embedding_cache import content_key
from genomics.models import KmerSpectrum

FEW_EPOCHS = ["trainer.max_epochs=2", "logger=csv", "callbacks=default"]  # fit + test, no held-out evaluation


@pytest.fixture
def calls(monkeypatch):
    """Counts the subjects passed through the demo's two encoders' forward (k-mer spectrum, correlation FC)."""
    counts = {"genomics": 0, "brain": 0}
    for modality, cls in (("genomics", KmerSpectrum), ("brain", FunctionalConnectivity)):
        forward = cls.forward

        def counted(self, x, _forward=forward, _m=modality):
            counts[_m] += len(x["ids"] if isinstance(x, dict) else x)
            return _forward(self, x)

        monkeypatch.setattr(cls, "forward", counted)
    return counts


def _cfg(train_config, tmp_path, demo_cache, name, store, overrides=()):
    cfg = train_config(tmp_path / name, demo_cache, [*FEW_EPOCHS, *overrides])
    with open_dict(cfg):
        cfg.feature_cache.dir = str(store)
    return cfg


def test_second_run_makes_no_encoder_call_and_equals_the_uncached_run(train_config, tmp_path, demo_cache, calls):
    store = tmp_path / "store"
    metrics1, objs1 = train(_cfg(train_config, tmp_path, demo_cache, "first", store))
    cache = objs1["datamodule"].feature_cache
    n = len(objs1["datamodule"].cohort.subjects)
    assert {m: s["computed"] for m, s in cache.stats.items()} == {"genomics": n, "brain": n}  # the pre-pass only
    assert calls == {"genomics": n, "brain": n}  # training, validation and test read the stored features

    calls.update(genomics=0, brain=0)
    metrics2, objs2 = train(_cfg(train_config, tmp_path, demo_cache, "second", store))
    assert calls == {"genomics": 0, "brain": 0}
    stats = objs2["datamodule"].feature_cache.stats
    assert all(s["cached"] == n and s["computed"] == 0 for s in stats.values())

    from fusion.export import export

    export(objs1["trainer"].checkpoint_callback.best_model_path, out_dir=tmp_path / "export", splits=("test",))
    assert calls == {"genomics": 0, "brain": 0}  # export rebuilds through fusion.app.build: the same rows are read

    metrics3, objs3 = train(_cfg(train_config, tmp_path, demo_cache, "off", store, ["feature_cache.enabled=false"]))
    assert objs3["datamodule"].feature_cache is None and calls["brain"] > 0
    for key in ("train/loss", "val/loss", "test/loss", "test/g2b/R@1", "test/b2g/mean_rank"):
        assert metrics1[key] == pytest.approx(metrics2[key], abs=1e-6), key
        assert metrics1[key] == pytest.approx(metrics3[key], rel=1e-4, abs=1e-5), key  # float order of batching


def _prepared(train_config, tmp_path, demo_cache, overrides=()):
    cfg = train_config(tmp_path / "run", demo_cache, ["feature_cache.enabled=true", *overrides])
    with open_dict(cfg):
        cfg.feature_cache.dir = str(tmp_path / "store")
    resolve_cohort(cfg)
    return cfg, build(cfg, build_inputs(cfg))


def test_cached_features_equal_the_encoder_on_the_evaluation_view(train_config, tmp_path, demo_cache):
    cfg, run = _prepared(train_config, tmp_path, demo_cache)
    run.datamodule.setup()
    row = run.cohort.subjects.iloc[3]
    x = run.datamodule.brain_transform(row["fmri"], train=False)
    expected = run.model.net.brain.encoder(x[None])[0]
    assert torch.allclose(run.datamodule.features["brain"](row["fmri"]), expected, atol=1e-6)
    g = run.model.net.genomics.encoder(run.datamodule.genomics_transform(row["subject_id"])[None])[0]
    assert torch.allclose(run.datamodule.features["genomics"](row["subject_id"]), g, atol=1e-6)
    batch = next(iter(run.datamodule.val_dataloader()))
    assert batch["brain"].shape == (cfg.data.eval_batch_size, run.model.net.brain.encoder.output_dim)


def test_keys_change_with_the_input_file_and_the_settings(train_config, tmp_path, demo_cache):
    cfg, run = _prepared(train_config, tmp_path, demo_cache)
    cohort = run.cohort
    sid, fmri = cohort.subjects.iloc[0][["subject_id", "fmri"]]
    copy = tmp_path / ("copy" + "".join(Path(fmri).suffixes))
    shutil.copy(fmri, copy)
    scan = scan_for(cohort.scans, fmri)
    moved = SimpleNamespace(scans={str(copy): replace(scan, runs=(replace(scan.runs[0], path=str(copy)),))})
    same = subject_key("brain", moved, sid, str(copy))
    assert same == subject_key("brain", cohort, sid, fmri)  # content, not path
    with open(copy, "ab") as f:
        f.write(b"\0")
    assert subject_key("brain", moved, sid, str(copy)) != same
    retimed = SimpleNamespace(scans={fmri: replace(scan, runs=(replace(scan.runs[0], t_r=9.9),))})
    assert subject_key("brain", retimed, sid, fmri) != same  # the TR is part of the input
    assert subject_key("genomics", cohort, sid, fmri) == content_key("genomics-subject", sid)

    from genomics.embedding_cache import model_identity

    encoder = run.model.net.brain.encoder
    base = identity_settings("brain", {"kind": "correlation"}, {"window": None, "standardize": True}, cohort)
    other = identity_settings("brain", {"kind": "correlation"}, {"window": None, "standardize": False}, cohort)
    assert model_identity(encoder, **base) != model_identity(encoder, **other)
    moved = identity_settings("brain", {"kind": "correlation", "cache_dir": "/elsewhere"}, base["transform"], cohort)
    assert model_identity(encoder, **base) == model_identity(encoder, **moved)  # where things live is not a setting


def test_a_corrupt_or_partial_shard_is_recomputed(train_config, tmp_path, demo_cache):
    cfg, run = _prepared(train_config, tmp_path, demo_cache)
    run.datamodule.setup()
    first = run.datamodule.features["brain"].values.clone()
    shards = sorted((tmp_path / "store").glob("*/shards/*.safetensors"))
    assert len(shards) == 2  # one per modality (16 subjects < flush_rows)
    brain_shard = next(p for p in shards if p.parent.parent.name == _folder(run, "brain"))
    brain_shard.write_bytes(brain_shard.read_bytes()[: brain_shard.stat().st_size // 2])  # a half-copied file
    (brain_shard.parent / ".half.safetensors.123-abc.tmp").write_bytes(b"partial")  # a killed writer's temp
    _, again = _prepared(train_config, tmp_path, demo_cache)
    with pytest.warns(UserWarning, match="ignoring unreadable shard"):
        again.datamodule.setup()
    stats = again.datamodule.feature_cache.stats
    assert stats["brain"]["computed"] == len(run.cohort.subjects) and stats["genomics"]["computed"] == 0
    assert torch.allclose(again.datamodule.features["brain"].values, first, atol=1e-6)


def _folder(run, modality) -> str:
    (store,) = [c for c in (run.datamodule.feature_cache.root).iterdir() if _holds(c, run, modality)]
    return store.name


def _holds(folder: Path, run, modality: str) -> bool:
    import json

    meta = json.loads((folder / "meta.json").read_text())
    return meta["dim"] == getattr(run.model.net, modality).encoder.output_dim


def test_random_window_towers_are_cached_only_when_asked(train_config, tmp_path, demo_cache):
    overrides = ["brain=brainlm_mae_tiny", "brain.encoder.freeze=true"]
    cfg = train_config(tmp_path / "run", demo_cache, overrides)
    resolve_cohort(cfg)
    run = build(cfg, build_inputs(cfg))
    towers = {m: (getattr(run.model.net, m).encoder, t) for m, t in _transforms(run).items()}
    assert cached_modalities("auto", towers) == ["genomics"]  # random training windows: not equal, not cached
    assert cached_modalities(True, towers) == ["genomics", "brain"]
    assert run.model.net.brain.precomputed is False and run.model.net.genomics.precomputed is True
    trainable = {m: (getattr(run.model.net, m).encoder, t) for m, t in _transforms(run).items()}
    trainable["brain"][0].requires_grad_(True)
    assert cached_modalities(True, trainable) == ["genomics"]  # a fine-tuned encoder is never cached
    with pytest.raises(ValueError, match="feature_cache.enabled"):
        cached_modalities("yes", towers)


def _transforms(run) -> dict:
    return {"genomics": run.datamodule.genomics_transform, "brain": run.datamodule.brain_transform}


def test_the_pre_pass_uses_workers_and_stores_in_shards(tmp_path):
    """FrozenFeatureCache on its own: workers, flushes every flush_rows subjects, a second prepare reads all."""

    class Cohort:
        subjects = __import__("pandas").DataFrame({"subject_id": [f"s{i}" for i in range(10)], "fmri": ["x"] * 10})

    class Encoder(torch.nn.Module):
        output_dim = 3

        def forward(self, x):
            return x.float() * torch.tensor([1.0, 2.0, 3.0])

    def transform(sid):
        return torch.full((3,), float(sid[1:]))

    cache = FrozenFeatureCache(tmp_path, {"genomics": (Encoder(), {"x": 1})}, batch_size=3, num_workers=2, flush_rows=4)
    table = cache.prepare(Cohort(), {"genomics": transform})["genomics"]
    assert np.allclose(table("s7").numpy(), [7, 14, 21])
    assert len(list(tmp_path.glob("*/shards/*.safetensors"))) == 2  # flushed at 6 rows and at 10 (4 >= flush_rows)
    again = FrozenFeatureCache(tmp_path, {"genomics": (Encoder(), {"x": 1})}).prepare(Cohort(), {"genomics": None})
    assert torch.equal(again["genomics"].values, table.values)


@pytest.mark.slow  # ~20 s idle (tangent FC with Ledoit-Wolf on every training item)
def test_a_data_fitted_encoder_is_not_cached_and_still_fits(train_config, tmp_path, demo_cache, calls):
    tangent = ["brain.encoder.kind=tangent", "brain.encoder.covariance=ledoit_wolf"]  # 100 volumes < 264 parcels
    cfg = _cfg(train_config, tmp_path, demo_cache, "tangent", tmp_path / "store", tangent)
    with open_dict(cfg):
        cfg.trainer.max_epochs = 1
    metrics, objs = train(cfg)
    net = objs["model"].net
    assert net.genomics.precomputed and not net.brain.precomputed  # tangent FC is fitted on the training split
    assert bool(net.brain.encoder.fitted) and np.isfinite(metrics["test/loss"])
    n = len(objs["datamodule"].cohort.subjects)
    assert calls["genomics"] == n and calls["brain"] > n  # the brain encoder runs every epoch, the k-mer once
