"""python -m fusion.manifest on a small fMRIPrep-style tree written here (real NIfTI, TSV and JSON files)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brain.bids import find_bold_runs, parse_entities
from fusion.demo.fmriprep import fmriprep_tree
from fusion.errors import FusionInputError
from fusion.manifest import build_manifest, main, write_table
from fusion.splits import assign_splits


def _img(rng, n=20, t_r=1.5):
    data = rng.normal(100, 5, (5, 5, 5, n)).astype(np.float32)
    data[0] = 0  # background
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    img.header.set_zooms((2.0, 2.0, 2.0, t_r))
    return img


@pytest.fixture
def tree(tmp_path):
    rng = np.random.default_rng(0)
    scans = {f"sub-{k:02d}": [_img(rng)] for k in range(1, 6)}
    scans["sub-02"] = [_img(rng, n=20), _img(rng, n=24)]  # two runs
    participants = pd.DataFrame(
        {"age": [30, 41, "n/a", 55, 60], "site": ["a", "a", "b", "b", "b"], "family_id": ["f1", "f1", "f2", "", "f3"]},
        index=[f"sub-{k:02d}" for k in range(1, 6)],
    )
    root = fmriprep_tree(tmp_path / "derivatives", scans, participants, seed=0)
    # a second space and a task that must not match
    other = root / "sub-01" / "func"
    nib.save(_img(rng), other / "sub-01_task-rest_run-1_space-T1w_desc-preproc_bold.nii.gz")
    nib.save(_img(rng), other / "sub-01_task-restx_run-1_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
    (root / "sub-05" / "func" / "sub-05_task-rest_run-1_desc-confounds_timeseries.tsv").unlink()
    return root


def test_parse_entities():
    ent, suffix = parse_entities(
        "sub-01_ses-2_task-rest_run-3_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.nii.gz"
    )
    assert ent == {"sub": "01", "ses": "2", "task": "rest", "run": "3", "space": "MNI152NLin2009cAsym", "res": "2",
                   "desc": "preproc"}  # fmt: skip
    assert suffix == "bold.nii.gz"
    assert parse_entities("rest.nii.gz") == ({}, "rest.nii.gz")


def test_manifest_from_fmriprep_tree(tree, tmp_path):
    out = tmp_path / "cohort" / "manifest.csv"
    table, notes = build_manifest(tree, out)
    write_table(table, out)
    got = pd.read_csv(out, dtype={"subject_id": str})
    assert got["subject_id"].tolist() == [f"sub-{k:02d}" for k in range(1, 6)]
    assert list(got.columns[:5]) == ["subject_id", "fmri", "confounds", "mask", "t_r"]
    base = out.parent
    first = (base / got.loc[1, "fmri"]).resolve()
    assert first == (
        tree / "sub-02/func/sub-02_task-rest_run-1_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.nii.gz"
    )
    assert nib.load(str(first)).shape[3] == 20  # the first run, not the 24-volume second
    for col in ("fmri", "confounds", "mask"):
        assert all((base / p).is_file() for p in got[col].dropna())
    assert got["confounds"].isna().tolist() == [False] * 4 + [True]  # sub-05's table was removed
    assert any("sub-05" in n and "no confounds" in n for n in notes)
    assert any("sub-02: 2 runs" in n for n in notes)
    conf = pd.read_csv(base / got.loc[0, "confounds"], sep="\t")
    assert len(conf) == 20 and "framewise_displacement" in conf.columns
    assert got["t_r"].tolist() == [1.5] * 5  # from the JSON sidecars
    assert got["age"].isna().tolist() == [False, False, True, False, False]  # BIDS n/a
    assert set(got["split"]) <= {"train", "val", "test"}
    assert got.loc[0, "split"] == got.loc[1, "split"]  # family f1
    assert not list(base.glob(".manifest.csv.*"))  # no temp file left


def test_manifest_all_runs_and_sessions(tree, tmp_path):
    table, _ = build_manifest(tree, tmp_path / "m.tsv", runs="all")
    runs = table.set_index("subject_id")["fmri"]
    assert runs["sub-02"].count(";") == 1 and "run-1" in runs["sub-02"].split(";")[0]
    assert table.set_index("subject_id")["confounds"]["sub-02"].count(";") == 1
    rng = np.random.default_rng(1)
    root = fmriprep_tree(tmp_path / "ses", {"sub-x": [_img(rng), _img(rng)]}, sessions=True)
    found, _ = find_bold_runs(root)
    assert [r.entities["ses"] for r in found] == ["1", "2"]
    assert all(r.confounds is not None and r.mask is not None for r in found)


def test_manifest_errors(tree, tmp_path):
    with pytest.raises(ValueError, match="no preprocessed BOLD.*task="):
        build_manifest(tree, tmp_path / "m.csv", task="nback")
    extra = tree / "sub-01/func/sub-01_task-rest_run-1_space-MNI152NLin2009cAsym_res-3_desc-preproc_bold.nii.gz"
    nib.save(_img(np.random.default_rng(2)), extra)
    with pytest.raises(ValueError, match="several resolutions.*res="):
        build_manifest(tree, tmp_path / "m.csv")
    table, _ = build_manifest(tree, tmp_path / "m.csv", res="2")
    assert len(table) == 5
    with pytest.raises(FusionInputError, match="runs must be"):
        build_manifest(tree, tmp_path / "m.csv", res="2", runs="last")


def test_cli(tree, tmp_path, capsys):
    out = tmp_path / "manifest.csv"
    out.write_text("old\n")
    assert main([f"bids={tree}", f"out={out}", "split_seed=3"]) == 0
    assert "5 subjects, 6 runs" not in capsys.readouterr().out  # runs=first: 5 runs
    assert pd.read_csv(out)["subject_id"].tolist()[0] == "sub-01"
    first = out.read_text()
    assert main([f"bids={tree}", f"out={out}", "split_seed=3"]) == 0
    assert out.read_text() == first  # reproducible
    assert main([f"bids={tree}", f"out={out}", "runs=all"]) == 0
    assert "5 subjects, 6 runs" in capsys.readouterr().out
    assert main([f"bids={tree}"]) == 2
    assert "missing out=" in capsys.readouterr().err
    assert main([f"bids={tree}", f"out={out}", "colour=red"]) == 2
    assert main([f"bids={tmp_path / 'nope'}", f"out={out}"]) == 2
    assert "not found" in capsys.readouterr().err


def test_assign_splits_stratified_grouped_reproducible():
    n = 90
    ids = [f"s{i}" for i in range(n)]
    sites = [f"site{(i // 2) % 3}" for i in range(n)]  # 30 per site; a family is scanned at one site
    families = [f"f{i // 2}" if i < 40 else None for i in range(n)]  # 20 sibling pairs, then singletons
    a = assign_splits(ids, (0.7, 0.15, 0.15), 0, sites, families)
    assert a == assign_splits(ids, (0.7, 0.15, 0.15), 0, sites, families)
    assert a != assign_splits(ids, (0.7, 0.15, 0.15), 1, sites, families)
    for f in range(20):
        assert a[2 * f] == a[2 * f + 1]  # families never straddle splits
    for s in range(3):
        c = Counter(x for x, site in zip(a, sites) if site == f"site{s}")
        assert abs(c["train"] - 21) <= 1.5 and abs(c["val"] - 4.5) <= 1.5 and abs(c["test"] - 4.5) <= 1.5, c
    assert abs(Counter(a)["train"] - 63) <= 1 and abs(Counter(a)["val"] - 13.5) <= 1
    # a small cohort (12 subjects, 6 families over 3 sites) still gets val and test subjects
    small = assign_splits(ids[:12], (0.7, 0.15, 0.15), 0, sites[:12], [f"f{i // 2}" for i in range(12)])
    assert Counter(small) == {"train": 8, "val": 2, "test": 2}
    with pytest.raises(ValueError, match="unique"):
        assign_splits(["a", "a"])
    assert Counter(assign_splits(ids, (1, 0, 0))) == {"train": n}


def test_bids_tree_has_real_confounds(tree):
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    bold = tree / "sub-01/func/sub-01_task-rest_run-1_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.nii.gz"
    conf, mask = load_confounds_strategy(str(bold), denoise_strategy="scrubbing")
    assert conf.shape[0] == 20 and mask is not None and len(mask) < 20 - 2  # spikes (+ neighbours) and volume 0
    conf, mask = load_confounds_strategy(str(bold), denoise_strategy="compcor")
    assert any(c.startswith("a_comp_cor") for c in conf.columns)
    assert Path(bold).is_file()
