"""Manifests from fMRIPrep trees and parcellated series through fusion.cohort: runs, confounds, masks and TR reach the
brain transforms; the report counts censored volumes; volume encoders refuse parcel inputs; TR checks; space=fsLR
finds fMRIPrep's CIFTI dense series, which a .dlabel.nii atlas parcellates as the masker does the volumes."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest

from brain.errors import BrainInputError
from brain.parcellation import ParcelTimeSeries
from brain.scans import Scan
from brain.transforms import BrainLMParcels, VolumeWindows
from fusion.cohort import CohortError, exclude_short_scans, load_cohort
from fusion.demo import generate_demo_cohort
from fusion.demo.fmriprep import DLABEL, fmriprep_from_demo
from fusion.manifest import build_manifest, write_table

N_VOLUMES = 30


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return generate_demo_cohort(tmp_path_factory.mktemp("mc") / "demo", n_subjects=6, n_volumes=N_VOLUMES)


@pytest.fixture(scope="module")
def fmriprep(demo, tmp_path_factory):
    """The demo's scans as fMRIPrep derivatives, two runs per subject, and its runs=all manifest."""
    root = fmriprep_from_demo(demo["manifest"].parent, tmp_path_factory.mktemp("mcd") / "derivatives", runs=2)
    out = root.parent / "manifest.csv"
    write_table(build_manifest(root, out, runs="all")[0], out)
    return out


def load(demo, manifest, **kw):
    files = {k: v for k, v in demo.items() if k != "manifest"}
    return load_cohort(manifest, **files, **kw)


def test_fmriprep_manifest_loads_with_runs_confounds_and_masks(demo, fmriprep):
    cohort, report = load(demo, fmriprep)
    assert report.ok, report.summary()
    assert len(cohort.subjects) == 6 and set(cohort.covariates) == {"age", "sex", "site", "family_id"}
    assert "confounds" not in cohort.subjects.columns and (cohort.subjects["t_r"] == 2.0).all()
    scan = cohort.scans[cohort.subjects["fmri"][0]]
    assert scan.subject_id == "sub-0001" and len(scan.runs) == 2
    assert all(r.confounds.endswith("desc-confounds_timeseries.tsv") and r.mask.endswith("brain_mask.nii.gz")
               for r in scan.runs)  # fmt: skip
    assert cohort.inputs("brain")["scans"] is cohort.scans
    # censoring is counted per subject and listed in the report
    tf = ParcelTimeSeries(cohort.atlas, cohort.labels, window=20, n_eval_windows=3, confounds="scrubbing",
                          scans=cohort.scans)  # fmt: skip
    exclude_short_scans(cohort, report, tf)
    assert set(report.censored) == set(cohort.subjects["subject_id"])
    lost, total = report.censored["sub-0001"]
    assert total == 2 * N_VOLUMES and 2 * 3 <= lost < total  # 2 spikes + volume 0 per run, at least
    assert "volumes censored (brain.transform.confounds=scrubbing" in report.summary()
    assert tuple(tf(cohort.subjects["fmri"][0]).shape) == (3, 20, len(cohort.labels))


def test_tr_mismatch_warns_or_fails_strict(demo, fmriprep):
    cohort, report = load(demo, fmriprep)
    tf = BrainLMParcels(cohort.atlas, labels=cohort.labels, window=20, expected_t_r=0.735, scans=cohort.scans)
    exclude_short_scans(cohort, report, tf)
    assert len(cohort.subjects) == 6 and any("trained at 0.735 s" in p.message for p in report.warnings)
    cohort, report = load(demo, fmriprep)
    with pytest.raises(CohortError, match="trained at 0.735 s"):
        exclude_short_scans(cohort, report, tf, strict=True)


def test_bad_rows_are_excluded_with_reasons(demo, fmriprep, tmp_path):
    table = pd.read_csv(fmriprep, dtype=str)
    base = fmriprep.parent
    table["fmri"] = [str(base / f.split(";")[0]) for f in table["fmri"]]  # first runs only, absolute
    table["confounds"] = [str(base / c.split(";")[0]) for c in table["confounds"]]
    table["mask"] = [str(base / c.split(";")[0]) for c in table["mask"]]
    short = pd.read_csv(table.loc[1, "confounds"], sep="\t").iloc[:-3]
    short.to_csv(tmp_path / "short.tsv", sep="\t", index=False)
    table.loc[1, "confounds"] = str(tmp_path / "short.tsv")
    table.loc[2, "confounds"] = "a.tsv;b.tsv"  # two tables for one run
    table.loc[3, "t_r"] = "fast"
    table.loc[4, "t_r"] = "2.5"  # disagrees with the header
    table.loc[5, "confounds"] = str(tmp_path / "absent.tsv")
    table.to_csv(tmp_path / "m.csv", index=False)
    cohort, report = load(demo, tmp_path / "m.csv")
    assert cohort.subjects["subject_id"].tolist() == ["sub-0001", "sub-0005"]
    assert cohort.subjects["t_r"].tolist() == [2.0, 2.5]  # the manifest's t_r wins
    text = report.summary()
    assert "short.tsv has 27 rows but" in text and "30 volumes" in text
    assert "lists 2 file(s) for 1 run(s)" in text and "'fast' is not a positive number" in text
    assert "absent.tsv" in text and "differs from the header's 2 s" in text


def test_parcellated_cohort_and_volume_encoders_refuse_it(demo, tmp_path):
    cohort, _ = load(demo, demo["manifest"])
    tf = ParcelTimeSeries(cohort.atlas, cohort.labels, standardize=False)
    rows = []
    for sid, fmri in zip(cohort.subjects["subject_id"], cohort.subjects["fmri"]):
        np.save(tmp_path / f"{sid}.npy", tf.parcel_series(fmri))  # (T, P) parcel means
        rows.append({"subject_id": sid, "fmri": f"{sid}.npy", "t_r": 2.0})
    pd.DataFrame(rows).to_csv(tmp_path / "parcels.csv", index=False)
    cohort, report = load(demo, tmp_path / "parcels.csv", checks="full")
    assert report.ok and len(cohort.subjects) == 6 and (cohort.subjects["n_volumes"] == N_VOLUMES).all()
    assert cohort.scans[cohort.subjects["fmri"][0]].kind == "parcels"
    swift = VolumeWindows(shape=(8, 8, 8), window=4, scans=cohort.scans)
    with pytest.raises(CohortError, match=r"no usable subject(.|\n)*'sub-0001'.*parcellated series; SwiFT reads 4D"):
        exclude_short_scans(cohort, report, swift)
    np.save(tmp_path / "sub-0002.npy", np.zeros((N_VOLUMES, 5), np.float32))
    cohort, report = load(demo, tmp_path / "parcels.csv")
    assert "sub-0002" in report.excluded and "5 columns, but the atlas has" in report.summary()


def test_fslr_dense_series_found_and_parcellated_with_a_dlabel(demo, tmp_path):
    root = fmriprep_from_demo(demo["manifest"].parent, tmp_path / "derivatives", runs=2, cifti=True)
    out = tmp_path / "manifest.csv"
    table, notes = build_manifest(root, out, space="fsLR", runs="all")
    write_table(table, out)
    assert "mask" not in table.columns and not any("brain mask" in n for n in notes)
    assert len(table) == 6 and (table["t_r"] == 2.0).all()  # from the .dtseries.json sidecars
    runs = [f.split(";") for f in table["fmri"]]
    assert all(len(r) == 2 and all(f.endswith("_space-fsLR_den-91k_bold.dtseries.nii") for f in r) for r in runs)
    assert all(c.split(";")[0].endswith("_run-1_desc-confounds_timeseries.tsv") for c in table["confounds"])
    volumes, _ = build_manifest(root, out)  # the default space still finds only the NIfTI runs
    assert all(f.endswith("desc-preproc_bold.nii.gz") for f in volumes["fmri"])
    files = {k: v for k, v in demo.items() if k != "manifest"}
    cohort, report = load_cohort(out, **{**files, "atlas": root / DLABEL}, checks="full")
    assert report.ok, report.summary()
    assert len(cohort.subjects) == 6 and {s.kind for s in cohort.scans.values()} == {"cifti"}
    assert len(cohort.labels) == 264
    # the dense series parcellated with the dlabel = the volume parcellated with the label NIfTI, run by run
    cifti = ParcelTimeSeries(cohort.atlas, cohort.labels, standardize=False, confounds="simple", scans=cohort.scans)
    write_table(volumes, tmp_path / "volumes.csv")
    vol_cohort, _ = load(demo, tmp_path / "volumes.csv")
    first_c, first_v = cohort.subjects["fmri"][0], vol_cohort.subjects["fmri"][0]
    scan = vol_cohort.scans[first_v]
    assert all(r.mask for r in scan.runs) and len(scan.runs) == 1  # volumes: masked, runs=first
    unmasked = Scan(scan.subject_id, tuple(dataclasses.replace(r, mask=None) for r in scan.runs))
    volume = ParcelTimeSeries(demo["atlas"], standardize=False, confounds="simple", scans={first_v: unmasked})
    for c, v in zip(cifti.run_series(first_c)[:1], volume.run_series(first_v), strict=True):
        assert c.shape == (N_VOLUMES - 1, 264)  # confounds regressed, the non-steady-state volume censored
        np.testing.assert_allclose(c, v, rtol=1e-4, atol=1e-4)
    # two densities: den= picks one, otherwise the error says so
    dts = root / "sub-0001" / "func" / "sub-0001_task-rest_run-1_space-fsLR_den-91k_bold.dtseries.nii"
    shutil.copy(dts, dts.with_name(dts.name.replace("den-91k", "den-170k")))
    with pytest.raises(BrainInputError, match="several resolutions.*den=<label>"):
        build_manifest(root, out, space="fsLR")
    assert len(build_manifest(root, out, space="fsLR", den="91k")[0]) == 6
