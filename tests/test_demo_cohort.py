"""The generated demo cohort: real files, loads clean, planted link recoverable on both sides, atomic reuse, CLI."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pysam
import pytest
from omegaconf import OmegaConf

from fusion.cohort import load_cohort
from fusion.demo import generate_demo_cohort
from fusion.demo import generator as demo_cohort
from genomics.alphabet import A_ID
from genomics.regions import read_bed
from genomics.transforms import PersonalSequenceTokens

ROOT = Path(__file__).resolve().parents[1]
N = 40  # subjects of the shared test cohort (default volumes, effect and noise: the link test needs them)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return generate_demo_cohort(tmp_path_factory.mktemp("demo") / "cohort", n_subjects=N)


@pytest.fixture(scope="module")
def truth(demo):
    return json.loads((demo["manifest"].parent / "truth.json").read_text())


def test_parameters_are_written_once_and_reach_both_entry_points():
    """DemoCohortConfig is the one source: fusion.demo_cohort's top level and fusion.train's demo group are it."""
    import dataclasses
    import inspect

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import fusion.app.cohort_source  # noqa: F401  (registers the `demo` group)
    from fusion.demo.config import DemoCohortConfig, demo_params

    defaults = dataclasses.asdict(DemoCohortConfig())
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("demo_cohort", overrides=["out=somewhere", "n_subjects=7"])
        train = compose("train", overrides=["demo.n_subjects=50", "demo.tr=3"])
        with pytest.raises(Exception, match="n_subjects"):
            compose("train", overrides=["demo.n_subjects=many"])  # typed: a wrong value fails at composition
    params = OmegaConf.to_container(cfg)
    assert params.pop("out") == "somewhere" and params.pop("overwrite") is False
    assert params == {**defaults, "n_subjects": 7}
    assert demo_params(**OmegaConf.to_container(train.demo)) == demo_params(n_subjects=50, tr=3)
    assert not (ROOT / "configs" / "demo" / "default.yaml").exists()  # no YAML copy of the defaults
    source = inspect.getsource(DemoCohortConfig)
    for key in defaults:  # one comment per field
        line = next(ln for ln in source.splitlines() if ln.strip().startswith(f"{key}:"))
        assert "  # " in line, key


def test_loads_clean_with_strict_validation(demo):
    cohort, report = load_cohort(**demo, strict=True)
    assert report.ok and not report.warnings and not report.excluded
    assert len(cohort.subjects) == N and cohort.n_regions == 16 and cohort.n_parcels == 264
    assert set(cohort.subjects["split"]) == {"train", "val", "test"}
    assert list(cohort.covariates) == ["age", "sex", "site"]


def test_files_are_real(demo):
    fasta = pysam.FastaFile(str(demo["reference"]))
    assert list(fasta.references) == ["chr1", "chr2", "chr3", "chr4"] and Path(f"{demo['reference']}.fai").exists()
    assert any(c.islower() for c in fasta.fetch("chr1", 0, 20_000))  # soft-masked stretches
    vf = pysam.VariantFile(str(demo["vcf"]))
    assert vf.index is not None and list(vf.header.samples) == [f"sub-{i + 1:04d}" for i in range(N)]
    records = list(vf.fetch("chr2"))
    assert len(records) == 4 * 30 and all(s.phased for r in records for s in r.samples.values())
    assert any(len(r.ref) > 1 for r in records) and any(len(r.alts[0]) > 1 for r in records)  # deletions, insertions
    manifest = pd.read_csv(demo["manifest"])
    atlas = np.asarray(nib.load(demo["atlas"]).dataobj)
    assert atlas.dtype.kind == "i" and set(np.unique(atlas)) == set(range(265))
    for fmri in manifest["fmri"][:3]:
        img = nib.load(demo["manifest"].parent / fmri)
        assert img.ndim == 4 and img.shape[:3] == atlas.shape and img.shape[3] >= 150
        assert img.header.get_zooms()[3] == 2.0 and img.get_data_dtype() == np.int16
        data = np.asarray(img.dataobj)
        assert (data[atlas > 0] > 0).all() and (data[0] == 0).all()  # signal in the spheres, 0 outside the brain
    coords = pd.read_csv(demo["atlas_coords"])
    assert list(coords.columns) == ["label", "x", "y", "z", "name", "network"] and coords["network"].nunique() == 9


def test_truth_matches_the_vcf(demo, truth):
    """Causal variants are in the VCF, and the factors recomputed from its genotypes are the recorded ones."""
    vf = pysam.VariantFile(str(demo["vcf"]))
    dosage = {}
    for f in truth["factors"]:
        assert len(f["variants"]) == 3 and len(f["networks"]) == 2
        for v in f["variants"]:
            rec = next(r for r in vf.fetch(v["contig"], v["pos"] - 1, v["pos"]) if r.id == v["id"])
            assert (rec.ref, rec.alts[0]) == (v["ref"], v["alt"]) and 0.25 <= v["alt_freq"] <= 0.5
            dosage[v["id"]] = {s: sum(a == 1 for a in smp["GT"]) for s, smp in rec.samples.items()}
    for sid, subject in truth["subjects"].items():
        for k, f in enumerate(truth["factors"]):
            w = np.array([v["weight"] for v in f["variants"]])
            p = np.array([v["alt_freq"] for v in f["variants"]])
            d = np.array([dosage[v["id"]][sid] for v in f["variants"]])
            expected = (w * (d - 2 * p)).sum() / np.sqrt((w**2 * 2 * p * (1 - p)).sum())
            assert subject["factors"][k] == pytest.approx(expected, abs=1e-4)


def cv_r2(x, y, folds=5):
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict

    pred = cross_val_predict(RidgeCV(alphas=np.logspace(-2, 5, 15)), x - x.mean(0), y, cv=KFold(folds, shuffle=True))
    return 1 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)  # (K,)


@pytest.mark.slow
def test_planted_link_recoverable_from_functional_connectivity(demo, truth):
    """Ridge from network-level FC (NiftiLabelsMasker parcel means, Pearson) recovers the factors on held-out folds."""
    from nilearn.maskers import NiftiLabelsMasker

    manifest = pd.read_csv(demo["manifest"])
    network = pd.read_csv(demo["atlas_coords"])["network"].to_numpy()
    nets = sorted(set(network))
    masker = NiftiLabelsMasker(str(demo["atlas"]), standardize=None).fit()
    features = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fmri in manifest["fmri"]:
            fc = np.arctanh(np.corrcoef(masker.transform(str(demo["manifest"].parent / fmri)).T).clip(-0.999, 0.999))
            features.append(
                [fc[np.ix_(network == a, network == b)].mean() for i, a in enumerate(nets) for b in nets[i:]]
            )
    y = np.array([truth["subjects"][s]["factors"] for s in manifest["subject_id"]])
    np.random.seed(0)
    r2 = cv_r2(np.array(features), y)
    assert r2.mean() > 0.4 and r2.min() > 0.15, r2  # ~0.73 with the default 200 subjects (see kb/cohort-format.md)


def test_planted_link_survives_into_haplotype_kmers(demo, truth):
    """In each region's tokenized haplotypes, the count of a causal SNV's ALT 6-mer moves with its dosage, so a linear
    readout of just those 24 entries of the per-region k-mer spectra gives back the factors (R^2 ~ 1; less where
    another variant of the region happens to create or destroy the same 6-mer)."""
    tokens = PersonalSequenceTokens(demo["reference"], demo["vcf"], read_bed(demo["regions"]))
    regions = tokens.haplotypes.regions
    fasta = pysam.FastaFile(str(demo["reference"]))
    features = []  # (region index, ALT base + the 5 reference bases to its right: no other variant within 7 bp)
    for f in truth["factors"]:
        for v in f["variants"]:
            region = next(i for i, r in enumerate(regions) if r.contig == v["contig"] and r.start < v["pos"] <= r.end)
            features.append((region, v["alt"] + fasta.fetch(v["contig"], v["pos"], v["pos"] + 5).upper()))
    ids = list(truth["subjects"])
    x = np.zeros((len(ids), len(features)))
    for i, sid in enumerate(ids):
        letters = np.array(list("ACGTN"))[np.clip(tokens(sid).numpy() - A_ID, 0, 4)]  # (R, 2, L); padding -> N
        seqs = ["".join(hap) for hap in letters.reshape(-1, tokens.length)]
        for j, (region, kmer) in enumerate(features):
            for seq in seqs[2 * region : 2 * region + 2]:
                x[i, j] += sum(seq.startswith(kmer, p) for p in range(len(seq) - 5))  # overlapping count
    y = np.array([truth["subjects"][s]["factors"] for s in ids])
    design = np.c_[np.ones(len(ids)), x]
    resid = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    r2 = 1 - (resid**2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
    assert r2.mean() > 0.9 and r2.min() > 0.7, r2


def test_reuse_atomic_write_and_clashes(tmp_path, monkeypatch):
    small = {"n_subjects": 2, "n_volumes": 5, "n_regions": 4, "variants_per_region": 5}
    out = tmp_path / "c"
    paths = generate_demo_cohort(out, **small)
    assert set(paths) == {"manifest", "vcf", "reference", "regions", "atlas", "atlas_coords"}
    marker = out / demo_cohort.MARKER
    stamp = marker.stat().st_mtime_ns
    assert generate_demo_cohort(out, **small) == paths and marker.stat().st_mtime_ns == stamp  # reused
    with pytest.raises(FileExistsError, match="other parameters"):
        generate_demo_cohort(out, **{**small, "seed": 1})
    generate_demo_cohort(out, overwrite=True, **{**small, "seed": 1})
    assert json.loads(marker.read_text())["params"]["seed"] == 1
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a cohort")
    with pytest.raises(FileExistsError, match="not a finished demo cohort"):
        generate_demo_cohort(tmp_path / "mine", overwrite=True, **small)
    with pytest.raises(ValueError, match="unknown demo cohort parameter.*n_subject"):
        generate_demo_cohort(tmp_path / "x", n_subject=3)

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo_cohort.brain, "bold_image", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_demo_cohort(tmp_path / "half", **small)
    assert sorted(os.listdir(tmp_path)) == ["c", "mine"]  # no half-written cohort, no temporary folder left


@pytest.mark.slow
def test_cli_writes_a_cohort(tmp_path):
    out = tmp_path / "cli"
    args = [f"out={out}", "n_subjects=3", "n_volumes=5", "n_regions=4", "variants_per_region=5"]
    run = subprocess.run(
        [sys.executable, "-m", "fusion.demo_cohort", *args], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "data.manifest=" in run.stdout and (out / "manifest.csv").exists()
    assert sorted(os.listdir(tmp_path)) == ["cli"]  # Hydra left no outputs/ or .hydra behind
