"""fusion.cohort: pairing by id, exclusion of incomplete subjects, each problem named by file, line or subject."""

import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pysam
import pytest

from fusion.cohort import CohortError, hash_split, load_cohort
from fusion.demo import generate_demo_cohort


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A tiny generated cohort (8 subjects, 12 volumes); tests copy what they modify."""
    return generate_demo_cohort(tmp_path_factory.mktemp("cohort") / "demo", n_subjects=8, n_volumes=12)


@pytest.fixture
def files(demo, tmp_path):
    """Paths of the demo cohort, with a private copy of the manifest (relative fMRI paths made absolute)."""
    paths = {k: str(v) for k, v in demo.items()}
    manifest = pd.read_csv(demo["manifest"])
    manifest["fmri"] = [str(demo["manifest"].parent / f) for f in manifest["fmri"]]
    paths["manifest"] = str(tmp_path / "manifest.csv")
    manifest.to_csv(paths["manifest"], index=False)
    return paths


def edit_manifest(files, fn, name="edited.csv", sep=","):
    """A copy of the manifest edited by fn (never the original, so edits do not pile up)."""
    path = files["manifest"].replace("manifest.csv", name)
    assert path != files["manifest"]
    fn(pd.read_csv(files["manifest"], dtype=str)).to_csv(path, index=False, sep=sep)
    return {**files, "manifest": path}


def messages(report):
    return [str(p) for p in report.problems]


def test_demo_cohort_loads_clean(files):
    cohort, report = load_cohort(**files, strict=True)
    assert report.ok and not report.warnings and not report.excluded
    assert len(cohort.subjects) == 8 and cohort.n_regions == 16 and cohort.n_parcels == 264
    assert cohort.covariates == {"age": "continuous", "sex": "categorical", "site": "categorical"}
    assert cohort.subjects["age"].dtype.kind == "f" and (cohort.subjects["n_volumes"] == 12).all()
    assert "cohort" in report.summary() and "8 of 8" in report.summary()


def test_pairing_is_by_id_not_row_order(files):
    shuffled = edit_manifest(files, lambda m: m.sample(frac=1.0, random_state=3), "shuffled.tsv", sep="\t")
    a, _ = load_cohort(**files)
    b, _ = load_cohort(**shuffled)
    pairs = dict(zip(a.subjects["subject_id"], a.subjects["fmri"]))
    assert dict(zip(b.subjects["subject_id"], b.subjects["fmri"])) == pairs
    assert list(b.subjects["subject_id"]) != list(a.subjects["subject_id"])  # order follows the manifest


def test_missing_subjects_reported_and_excluded(files, tmp_path):
    def edit(m):
        extra = m.iloc[[0]].assign(subject_id="sub-9999")  # has an fMRI, no genotypes
        m.loc[1, "fmri"] = str(tmp_path / "gone.nii.gz")  # has genotypes, no fMRI
        return pd.concat([m.drop(index=7), extra])  # sub-0008: genotypes only

    edited = edit_manifest(files, edit)
    cohort, report = load_cohort(**edited)
    assert set(report.excluded) == {"sub-9999", "sub-0002"}
    assert report.excluded["sub-9999"] == "not in VCF" and report.excluded["sub-0002"] == "fMRI missing"
    assert report.vcf_only == ["sub-0008"]
    assert len(cohort.subjects) == 6 and not {"sub-9999", "sub-0002"} & set(cohort.subjects["subject_id"])
    text = "\n".join(messages(report))
    assert f"{edited['manifest']}:9: subject 'sub-9999': not a sample of the VCF" in text
    assert f"{edited['manifest']}:3: subject 'sub-0002': fMRI file not found" in text
    with pytest.raises(CohortError) as err:
        load_cohort(**edited, strict=True)
    assert err.value.report is not None and "sub-9999" in str(err.value)


def test_manifest_problems_name_line_and_subject(files, tmp_path):
    img3d = tmp_path / "anat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), img3d)

    def edit(m):
        m.loc[1, "subject_id"] = "sub-0001"  # duplicate of line 2
        m.loc[2, "split"] = None
        m.loc[3, "split"] = "training"
        m.loc[4, "fmri"] = str(img3d)
        return m

    edited = edit_manifest(files, edit)
    cohort, report = load_cohort(**edited)
    text = "\n".join(messages(report))
    m = edited["manifest"]
    assert f"{m}:2: subject 'sub-0001': duplicate subject_id (lines [2, 3])" in text
    assert f"{m}:4: subject 'sub-0003': split is empty" in text
    assert f"{m}:5: subject 'sub-0004': unknown split 'training'" in text
    assert f"{m}:6: subject 'sub-0005': fMRI must be a 4D image" in text
    assert set(report.excluded) == {"sub-0001", "sub-0003", "sub-0004", "sub-0005"}
    assert len(cohort.subjects) == 3


def test_no_split_column_hash_split(files):
    cohort, report = load_cohort(**edit_manifest(files, lambda m: m.drop(columns="split")))
    assert report.split_source == "hash of subject_id"
    assert list(cohort.subjects["split"]) == [hash_split(s) for s in cohort.subjects["subject_id"]]
    ids = [f"s{i}" for i in range(3000)]
    fractions = pd.Series([hash_split(s, (0.5, 0.25, 0.25)) for s in ids]).value_counts(normalize=True)
    assert abs(fractions["train"] - 0.5) < 0.04 and abs(fractions["test"] - 0.25) < 0.04


def test_regions_problems_with_line_numbers_and_harmonised_naming(files, tmp_path):
    bed = tmp_path / "regions.bed"
    lines = open(files["regions"]).read().splitlines()
    lines[1] = "chr1\t500\t400\tbackwards"
    lines[2] = "chr9\t100\t200\tnowhere"
    lines[3] = lines[3].removeprefix("chr")  # "1\t..." vs FASTA "chr1"
    bed.write_text("\n".join(lines) + "\n")
    cohort, report = load_cohort(**{**files, "regions": str(bed)})
    text = "\n".join(messages(report))
    assert f"{bed}:2: bad coordinates" in text
    assert f"{bed}:3: contig 'chr9' is not in the reference FASTA" in text
    assert f"{bed}:4:" not in text  # '1' is the FASTA's 'chr1' under another spelling: harmonised, kept
    assert cohort.n_regions == 14 and [r.contig for r in cohort.regions].count("1") == 1


def test_vcf_contig_naming_and_ref_mismatch(files, tmp_path):
    fa = tmp_path / "reference.fa"
    seqs = {name: s for name, s in ((r, pysam.FastaFile(files["reference"]).fetch(r)) for r in ["chr1", "chr2"])}
    first = next(pysam.VariantFile(files["vcf"]).fetch("chr1"))
    s1 = list(seqs["chr1"])
    s1[first.start] = "T" if first.ref[0].upper() != "T" else "G"  # REF no longer matches
    fa.write_text(">chr1\n" + "".join(s1) + "\n>2\n" + seqs["chr2"] + "\n")  # chr2 renamed '2'
    _, report = load_cohort(**{**files, "reference": str(fa)})
    text = "\n".join(messages(report))
    assert f"{files['vcf']}:chr1:{first.pos}: REF" in text and "different genome builds" in text
    assert f"REF {first.ref!r} differs from the reference FASTA {fa}" in text
    assert "contigs ['chr3', 'chr4'] are not in the reference FASTA" in text  # chr2 is the FASTA's '2': harmonised


def test_atlas_and_coords_problems(files, tmp_path):
    atlas = nib.load(files["atlas"])
    as4d = tmp_path / "atlas4d.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([np.asarray(atlas.dataobj)] * 2, -1), atlas.affine), as4d)
    _, report = load_cohort(**{**files, "atlas": str(as4d)})
    assert any("atlas must be a 3D label image" in m for m in messages(report))
    floats = tmp_path / "atlas_float.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(atlas.dataobj) * 0.5, atlas.affine), floats)
    _, report = load_cohort(**{**files, "atlas": str(floats)})
    assert any("must be integer labels" in m for m in messages(report))
    coords = pd.read_csv(files["atlas_coords"])
    bad = tmp_path / "coords.tsv"
    coords.drop(index=[0]).assign(label=lambda c: c["label"].replace(264, 999)).to_csv(bad, sep="\t", index=False)
    _, report = load_cohort(**{**files, "atlas_coords": str(bad)})
    text = "\n".join(messages(report))
    assert "labels [999] are not in the atlas" in text and "atlas labels [1, 264] have no coordinates" in text


def test_fatal_problems_raise(files, tmp_path):
    with pytest.raises(FileNotFoundError, match="vcf: .*nope.vcf.gz"):
        load_cohort(**{**files, "vcf": str(tmp_path / "nope.vcf.gz")})
    with pytest.raises(CohortError, match="missing column.*'fmri'"):
        load_cohort(**edit_manifest(files, lambda m: m.drop(columns="fmri")))
    with pytest.raises(CohortError, match=r"\.csv or \.tsv"):
        shutil.copy(files["manifest"], tmp_path / "manifest.xlsx")
        load_cohort(**{**files, "manifest": str(tmp_path / "manifest.xlsx")})
    with pytest.raises(CohortError, match="no usable subject"):
        load_cohort(**edit_manifest(files, lambda m: m.assign(subject_id=lambda d: d["subject_id"] + "x")))
