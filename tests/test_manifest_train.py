"""The recipes of kb/cohort-format.md and the README end to end at the TINY_DEMO sizes: an fMRIPrep-style tree (with
confounds) -> `python -m fusion.manifest` -> fusion.train with brain.transform.confounds=simple; the same tree plus
the demo VCF as a PLINK 2 set (Debian's plink2) trains the dosage baseline from data.genotypes=<.pgen> with
confounds=scrubbing (issue 11's "done when"); the tree's fsLR dense series (space=fsLR) with the atlas as .dlabel.nii
train brain=fc; a parcellated-series cohort (time x parcels .npy) trains with brain=fc."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fusion.app.cohort_source import demo_cohort
from fusion.demo.fmriprep import DLABEL, fmriprep_from_demo
from fusion.manifest import main as manifest_main
from fusion.train import train
from genomics.dosage import read_dosages


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


@pytest.mark.slow  # ~30 s on 2 shared cores (16 runs written, scrubbed, parcellated; plink2 < 1 s)
@pytest.mark.skipif(
    shutil.which("plink2") is None and not os.environ.get("CI"),
    reason="plink2 not installed (apt-get install plink2); required when CI is set",
)
def test_fmriprep_tree_and_pgen_train_the_dosage_baseline_with_scrubbing(tiny, tmp_path, demo_cache, train_config,
                                                                         capsys):  # fmt: skip
    root = fmriprep_from_demo(tiny["manifest"].parent, tmp_path / "derivatives", runs=1, artefact=0.5)
    manifest = tmp_path / "manifest.csv"
    assert manifest_main([f"bids={root}", f"out={manifest}"]) == 0
    assert "16 subjects, 16 runs" in capsys.readouterr().out
    subjects = pd.read_csv(manifest)["subject_id"].tolist()
    # kb/cohort-format.md: `plink2 --vcf` keeps the VCF's sample names as IIDs, and fMRIPrep's labels with their
    # `sub-` prefix are those names, so the .psam matches the manifest without renaming
    subprocess.run(["plink2", "--vcf", str(tiny["vcf"]), "--make-pgen", "--out", str(tmp_path / "cohort")],
                   check=True, capture_output=True)  # fmt: skip
    pgen = tmp_path / "cohort.pgen"
    psam = [line.split("\t")[0] for line in pgen.with_suffix(".psam").read_text().splitlines()[1:]]
    assert sorted(psam) == sorted(subjects) and subjects[0].startswith("sub-")
    overrides = cohort_overrides(tiny, manifest) + [
        f"data.genotypes={pgen}", "genomics=dosage", "brain.transform.confounds=scrubbing",
        "trainer.max_epochs=1",
    ]  # fmt: skip  (whole-scan FC windows: scrubbed scans of 95-97 volumes, NaN-padded per batch)
    metrics, objs = train(train_config(tmp_path, demo_cache, overrides))
    assert np.isfinite(metrics["train/loss"]) and "test/g2b/R@1" in metrics
    dm = objs["datamodule"]
    assert dm.brain_transform.confounds == "scrubbing" and len(dm.brain_transform.scans) == 16
    assert sum(len(r) for r in dm.brain_transform.run_series(dm.cohort.subjects["fmri"][0])) < 100  # censored
    transform = dm.genomics_transform
    assert Path(transform.genotypes) == pgen
    vcf = read_dosages(tiny["vcf"], transform.regions)  # the same regions, read from the VCF
    assert transform.table.dosages.shape == vcf.dosages.shape and vcf.dosages.shape[0] > 0
    for sid in dm.cohort.subjects["subject_id"]:
        np.testing.assert_array_equal(transform(sid).numpy(), vcf.dosages[:, vcf.samples.index(sid)], err_msg=sid)


@pytest.mark.slow  # ~25 s on 2 shared cores (16 runs written as NIfTI and CIFTI)
def test_fslr_dense_series_manifest_trains_with_fc(tiny, tmp_path, demo_cache, train_config, capsys):
    root = fmriprep_from_demo(tiny["manifest"].parent, tmp_path / "derivatives", runs=1, cifti=True)
    manifest = tmp_path / "manifest.csv"
    assert manifest_main([f"bids={root}", f"out={manifest}", "space=fsLR"]) == 0
    assert "16 subjects, 16 runs" in capsys.readouterr().out
    overrides = cohort_overrides({**tiny, "atlas": root / DLABEL}, manifest) + [
        "brain=fc", "brain.transform.confounds=simple", "trainer.max_epochs=1",
    ]  # fmt: skip
    metrics, objs = train(train_config(tmp_path, demo_cache, overrides))
    assert np.isfinite(metrics["train/loss"]) and "test/b2g/R@1" in metrics
    dm = objs["datamodule"]
    assert {s.kind for s in dm.cohort.scans.values()} == {"cifti"} and len(dm.brain_transform.labels) == 264
    assert dm.brain_transform.run_series(dm.cohort.subjects["fmri"][0])[0].shape == (99, 264)
