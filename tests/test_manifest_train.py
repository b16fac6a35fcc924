"""The recipes of kb/cohort-format.md and the README end to end at the TINY_DEMO sizes: an fMRIPrep-style tree (with
confounds) -> `python -m fusion.manifest` -> fusion.train with brain.transform.confounds=simple; a parcellated-series
cohort (time x parcels .npy) trains with brain=fc."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fusion.app.cohort_source import demo_cohort
from fusion.demo.fmriprep import fmriprep_from_demo
from fusion.manifest import main as manifest_main
from fusion.train import train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, demo_cache, train_config):
    """The TINY_DEMO cohort's files (generated once per session, shared with the other training tests)."""
    return demo_cohort(train_config(tmp_path_factory.mktemp("compose"), demo_cache, []))


def cohort_overrides(files: dict, manifest) -> list[str]:
    keys = ("vcf", "reference", "regions", "atlas", "atlas_coords")
    return [f"data.manifest={manifest}", *[f"data.{k}={files[k]}" for k in keys]]


@pytest.mark.slow  # ~110 s on 2 shared cores (32 runs written, parcellated); tests/test_manifest_cohort.py: fast path
def test_fmriprep_tree_to_manifest_to_training_with_confounds(tiny, tmp_path, demo_cache, train_config, capsys):
    root = fmriprep_from_demo(tiny["manifest"].parent, tmp_path / "derivatives", runs=2, artefact=0.5)
    manifest = tmp_path / "manifest.tsv"
    assert manifest_main([f"bids={root}", f"out={manifest}", "runs=all", "split_seed=1"]) == 0
    assert "16 subjects, 32 runs" in capsys.readouterr().out
    table = pd.read_csv(manifest, sep="\t")
    assert {"confounds", "mask", "t_r", "family_id", "site", "split"} <= set(table.columns)
    overrides = cohort_overrides(tiny, manifest) + [
        "brain.transform.confounds=simple", "brain.transform.detrend=true", "trainer.max_epochs=1",
    ]  # fmt: skip
    cfg = train_config(tmp_path, demo_cache, overrides)
    metrics, objs = train(cfg)
    assert np.isfinite(metrics["train/loss"]) and "test/b2g/R@1" in metrics
    transform = objs["datamodule"].brain_transform
    assert transform.confounds == "simple" and len(transform.scans) == 16
    path = objs["datamodule"].cohort.subjects["fmri"][0]
    runs = transform.run_series(path)
    assert [r.shape[0] for r in runs] == [99, 99]  # each run's non-steady-state volume 0 censored


def test_parcellated_series_cohort_trains_with_fc(tiny, tmp_path, demo_cache, train_config):
    from brain.parcellation import ParcelTimeSeries

    demo = pd.read_csv(tiny["manifest"], dtype={"subject_id": str})
    parcels = ParcelTimeSeries(str(tiny["atlas"]), standardize=False)
    (tmp_path / "series").mkdir()
    for sid, fmri in zip(demo["subject_id"], demo["fmri"]):  # UK Biobank style: one time x parcels table each
        np.save(tmp_path / "series" / f"{sid}.npy", parcels.parcel_series(tiny["manifest"].parent / fmri))
    demo["fmri"] = [f"series/{sid}.npy" for sid in demo["subject_id"]]
    demo["t_r"] = 2.0
    demo.to_csv(tmp_path / "manifest.csv", index=False)
    cfg = train_config(tmp_path, demo_cache, cohort_overrides(tiny, tmp_path / "manifest.csv") + ["brain=fc",
                       "trainer.max_epochs=1"])  # fmt: skip
    metrics, objs = train(cfg)
    assert np.isfinite(metrics["train/loss"]) and "test/b2g/R@1" in metrics
    assert {s.kind for s in objs["datamodule"].cohort.scans.values()} == {"parcels"}
