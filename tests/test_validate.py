"""python -m fusion.validate: a corpus of broken cohorts, each reported with its own message (subject, file and line
or site, what to do), all problems at once, exit status 1; a clean cohort exits 0; nothing written beside the data."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pysam
import pytest

from fusion.demo import generate_demo_cohort
from fusion.validate import main

KEYS = ("manifest", "vcf", "reference", "regions", "atlas", "atlas_coords")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A small generated cohort (8 subjects, 12 volumes, 16 regions of ~1 kb, 480 VCF records); never modified."""
    return generate_demo_cohort(tmp_path_factory.mktemp("vcohort") / "demo", n_subjects=8, n_volumes=12)


@pytest.fixture
def cohort(demo, tmp_path, monkeypatch):
    """A private copy of the manifest (fMRI paths absolute) beside the demo's other files; the cache in tmp_path."""
    monkeypatch.setenv("GENOBRAIN_CACHE", str(tmp_path / "cache"))
    files = {k: Path(demo[k]) for k in KEYS}
    table = pd.read_csv(demo["manifest"], dtype=str)
    table["fmri"] = [str(Path(demo["manifest"]).parent / f) for f in table["fmri"]]
    files["manifest"] = tmp_path / "manifest.csv"
    table.to_csv(files["manifest"], index=False)
    return files


def argv(files: dict, *extra: str) -> list[str]:
    return [f"data.{k}={v}" for k, v in files.items()] + list(extra)


def run(files, capsys, *extra) -> tuple[int, str]:
    rc = main(argv(files, *extra))
    out = capsys.readouterr()
    return rc, out.out + out.err


def edit_table(files, tmp_path, fn, name="edited.csv") -> dict:
    table = fn(pd.read_csv(files["manifest"], dtype=str))
    table.to_csv(tmp_path / name, index=False)
    return {**files, "manifest": tmp_path / name}


def scan(files, i=0):
    return nib.load(pd.read_csv(files["manifest"])["fmri"][i])


def with_scan(files, tmp_path, data, affine=None, i=0, name="bad_bold.nii.gz") -> dict:
    """Subject i's scan replaced by `data` (4D), saved in tmp_path."""
    img = scan(files, i)
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), path)
    return edit_table(files, tmp_path, lambda t: t.assign(fmri=[str(path) if j == i else f for j, f in
                                                                enumerate(t["fmri"])]))  # fmt: skip


def atlas_voxels(files, label=1):
    return np.asarray(nib.load(files["atlas"]).dataobj) == label


def write_bed(files, tmp_path, lines) -> dict:
    bed = tmp_path / "regions.bed"
    bed.write_text(Path(files["regions"]).read_text() + "".join(f"{line}\n" for line in lines))
    return {**files, "regions": bed}


def fasta_copy(files, tmp_path, edit=None) -> dict:
    """The reference as one sequence per contig, edited by edit(name, list of bases), with its own .fai."""
    fa = pysam.FastaFile(str(files["reference"]))
    out = tmp_path / "ref" / "reference.fa"
    out.parent.mkdir()
    with open(out, "w") as fh:
        for name in fa.references:
            seq = list(fa.fetch(name))
            if edit:
                edit(name, seq)
            fh.write(f">{name}\n{''.join(seq)}\n")
    pysam.faidx(str(out))
    return {**files, "reference": out}


def record(files, n):
    """The n-th VCF record inside the regions, in BED order (the order the checks read them)."""
    regions = [line.split("\t") for line in Path(files["regions"]).read_text().splitlines()]
    with pysam.VariantFile(str(files["vcf"])) as vf:
        records = [rec for c, a, b, *_ in regions for rec in vf.fetch(c, int(a), int(b)) if rec.start >= int(a)]
        rec = records[n]
        return rec.chrom, rec.start, rec.pos, rec.ref


# ------------------------------------------------------------------------------------------------ the fault corpus


def _missing_column(files, tmp_path):
    return edit_table(files, tmp_path, lambda t: t.drop(columns="fmri")), [":", "missing column(s) ['fmri']"]


def _duplicate_id(files, tmp_path):
    f = edit_table(files, tmp_path, lambda t: t.assign(subject_id=["sub-0001", *t["subject_id"][:-1]]))
    return f, [f"{f['manifest']}:2: subject 'sub-0001': duplicate subject_id (lines [2, 3]); ids must be unique"]


def _empty_id(files, tmp_path):
    f = edit_table(files, tmp_path, lambda t: t.assign(subject_id=["", *t["subject_id"][1:]]))
    return f, [f"{f['manifest']}:2: empty subject_id"]


def _unknown_split(files, tmp_path):
    f = edit_table(files, tmp_path, lambda t: t.assign(split=["training", *t["split"][1:]]))
    return f, [f"{f['manifest']}:2: subject 'sub-0001': unknown split 'training'"]


def _fmri_missing(files, tmp_path):
    f = edit_table(files, tmp_path, lambda t: t.assign(fmri=[str(tmp_path / "gone.nii.gz"), *t["fmri"][1:]]))
    return f, [f"{f['manifest']}:2: subject 'sub-0001': fMRI file not found: {tmp_path / 'gone.nii.gz'}"]


def _fmri_garbage(files, tmp_path):
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti at all" * 10)
    f = edit_table(files, tmp_path, lambda t: t.assign(fmri=[str(tmp_path / "junk.nii.gz"), *t["fmri"][1:]]))
    return f, ["subject 'sub-0001': fMRI file is not a readable NIfTI"]


def _fmri_truncated(files, tmp_path):
    raw = gzip.decompress(Path(scan(files).get_filename()).read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
    f = edit_table(files, tmp_path, lambda t: t.assign(fmri=[str(tmp_path / "cut.nii.gz"), *t["fmri"][1:]]))
    return f, ["subject 'sub-0001': fMRI image data cannot be read", "truncated or corrupt file?"]


def _fmri_3d(files, tmp_path):
    data = np.asarray(scan(files).dataobj)[..., 0]
    return with_scan(files, tmp_path, data), ["subject 'sub-0001': fMRI must be a 4D image with >= 2 volumes"]


def _too_few_volumes(files, tmp_path):
    data = np.asarray(scan(files).dataobj)[..., :6]
    f = with_scan(files, tmp_path, data)
    return f, ["subject 'sub-0001'", "6 volumes, fewer than the brain encoder's window of 10",
               "lower brain.transform.window"], ["brain=brainlm_mae_tiny", "brain.transform.window=10"]  # fmt: skip


def _nan_in_parcel(files, tmp_path):
    data = np.asarray(scan(files).dataobj).astype(np.float32)
    data[atlas_voxels(files), 6] = np.nan  # the middle volume of 12: one of the three read
    return with_scan(files, tmp_path, data), ["subject 'sub-0001'", "NaN/Inf value(s) inside atlas parcels",
                                              "volume(s) [6]"]  # fmt: skip


def _empty_parcel(files, tmp_path):
    data = np.asarray(scan(files).dataobj).copy()
    data[atlas_voxels(files, 5)] = 0
    return with_scan(files, tmp_path, data), ["subject 'sub-0001'", "1 atlas parcel(s) are all zero", "labels [5]"]


def _outside_field_of_view(files, tmp_path):
    img = scan(files)
    affine = img.affine.copy()
    affine[0, 3] += 80.0  # shifted 8 cm: part of the atlas falls outside the scan
    return with_scan(files, tmp_path, np.asarray(img.dataobj), affine), [
        "subject 'sub-0001'", "fall outside the scan's field of view", "must be in the atlas's space"]  # fmt: skip


def _not_in_vcf(files, tmp_path):
    f = edit_table(files, tmp_path, lambda t: t.assign(subject_id=["sub-9999", *t["subject_id"][1:]]))
    return f, [f"{f['manifest']}:2: subject 'sub-9999': not a sample of the VCF"]


def _vcf_extra_sample(files, tmp_path):  # a warning only: exit status 0
    f = edit_table(files, tmp_path, lambda t: t.iloc[1:])
    return f, ["[warning]", "1 sample(s) have no manifest row and are ignored, e.g. ['sub-0001']"]


def _vcf_garbage(files, tmp_path):
    (tmp_path / "bad.vcf").write_text("this is not a VCF\n")
    return {**files, "vcf": tmp_path / "bad.vcf"}, [f"{tmp_path / 'bad.vcf'}: not a readable VCF/BCF"]


def _ref_mismatch_late_site(files, tmp_path):
    chrom, start, pos, ref = record(files, 300)  # past the first 200 sites that every training run checks

    def edit(name, seq):
        if name == chrom:
            seq[start] = "A" if ref[0].upper() != "A" else "C"

    f = fasta_copy(files, tmp_path, edit)
    return f, [f"{files['vcf']}:{chrom}:{pos}: REF {ref!r} differs from the reference FASTA", "genome builds"]


def _non_dna_characters(files, tmp_path):
    first = open(files["regions"]).readline().split("\t")

    def edit(name, seq):
        if name == first[0]:
            seq[int(first[1]) + 10] = "R"

    pos = int(first[1]) + 11
    return fasta_copy(files, tmp_path, edit), [f"{first[0]}:{pos}", "outside the DNA alphabet", "['R']",
                                               "replace them with N"]  # fmt: skip


def _region_past_contig(files, tmp_path):
    f = write_bed(files, tmp_path, ["chr1\t49000\t60000\tlong"])
    return f, [f"{f['regions']}:17: region chr1:49001-60000 ends past the end of chr1"]


def _region_reversed(files, tmp_path):
    f = write_bed(files, tmp_path, ["chr2\t500\t500\tempty"])
    return f, [f"{f['regions']}:17: bad coordinates", "need 0 <= start < end"]


def _longer_than_context(files, tmp_path):
    return files, ["genomics.transform", "longer than the genomics encoder's context", "1,024-token",
                   "genomics.transform.max_len=1024"], ["genomics=caduceus_ps_1k", "genomics.transform.max_len=4096"]


def _atlas_4d(files, tmp_path):
    atlas = nib.load(files["atlas"])
    nib.save(nib.Nifti1Image(np.stack([np.asarray(atlas.dataobj)] * 2, -1), atlas.affine), tmp_path / "a4.nii.gz")
    return {**files, "atlas": tmp_path / "a4.nii.gz"}, ["atlas must be a 3D label image"]


def _coords_missing_label(files, tmp_path):
    pd.read_csv(files["atlas_coords"]).iloc[1:].to_csv(tmp_path / "coords.csv", index=False)
    return {**files, "atlas_coords": tmp_path / "coords.csv"}, ["atlas labels [1] have no coordinates"]


def _file_missing_and_more(files, tmp_path):  # a missing file does not hide the other problems
    f = write_bed({**files, "vcf": tmp_path / "nope.vcf.gz"}, tmp_path, ["chr1\t9\t3\tbackwards"])
    return f, [f"{tmp_path / 'nope.vcf.gz'}: vcf file not found", f"{f['regions']}:17: bad coordinates"]


def _outside_root(files, tmp_path):
    f = edit_table(files, tmp_path, lambda t: t.assign(fmri=["../../../../../../etc/passwd", *t["fmri"][1:]]))
    return f, ["subject 'sub-0001': fMRI path '../../../../../../etc/passwd' resolves to /etc/passwd, outside "
               "data.root="], [f"data.root={tmp_path.parent}"]  # fmt: skip


FAULTS = {name.removeprefix("_"): fn for name, fn in list(globals().items()) if name.startswith("_") and
          callable(fn) and fn.__module__ == __name__}  # fmt: skip
WARNING_ONLY = {"vcf_extra_sample"}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_corpus_each_problem_named(fault, cohort, tmp_path, capsys):
    out = FAULTS[fault](cohort, tmp_path)
    files, expected, extra = (*out, []) if len(out) == 2 else out
    rc, text = run(files, capsys, *extra)
    assert rc == (0 if fault in WARNING_ONLY else 1), text
    for piece in expected:
        assert piece in text, f"{piece!r} not in:\n{text}"
    assert "Traceback" not in text


def test_clean_cohort_exits_zero_and_every_problem_is_listed_at_once(cohort, tmp_path, capsys):
    rc, text = run(cohort, capsys)
    assert rc == 0 and "0 error(s)" in text and "OK" in text
    broken = {}
    for name in ("duplicate_id", "region_reversed", "coords_missing_label", "nan_in_parcel"):
        sub = tmp_path / name
        sub.mkdir()
        files, expected = FAULTS[name]({**cohort, **broken}, sub)[:2]
        broken |= {k: v for k, v in files.items() if v != cohort[k]}
    rc, text = run({**cohort, **broken}, capsys)
    assert rc == 1
    for piece in ("duplicate subject_id", "bad coordinates", "have no coordinates", "NaN/Inf value(s) inside"):
        assert piece in text


def test_cheap_level_of_training_checks_only_the_first_sites(cohort, tmp_path):
    from fusion.cohort import load_cohort

    files = FAULTS["ref_mismatch_late_site"](cohort, tmp_path)[0]
    _, cheap = load_cohort(**files)
    _, full = load_cohort(**files, checks="full")
    assert not any("REF" in p.message for p in cheap.problems)
    assert [p for p in full.errors if "REF" in p.message]


def test_validation_writes_nothing_beside_the_data(cohort, tmp_path, capsys):
    files = fasta_copy(cohort, tmp_path)
    Path(f"{files['reference']}.fai").unlink()  # an unindexed FASTA: indexed in the cache, not beside itself
    folders = {Path(files["reference"]).parent, Path(cohort["vcf"]).parent, Path(cohort["vcf"]).parent / "fmri"}

    def snapshot():
        return {(p, p.stat().st_mtime_ns, p.stat().st_size) for d in folders for p in d.iterdir()}

    before = snapshot()
    rc, text = run(files, capsys, "deep=true")
    assert rc == 0, text
    assert "deep" in text
    assert snapshot() == before
    assert list((tmp_path / "cache" / "fasta_index").rglob("reference.fa.fai"))


@pytest.mark.slow
def test_exit_status_of_the_real_command(cohort, tmp_path):
    env = {"GENOBRAIN_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    bad = FAULTS["duplicate_id"](cohort, tmp_path)[0]
    for files, extra, status, text in ((bad, [], 1, "duplicate subject_id"), (cohort, ["nonsense.key=1"], 2, "")):
        proc = subprocess.run([sys.executable, "-m", "fusion.validate", *argv(files, *extra)], capture_output=True,
                              text=True, env=env, timeout=300)  # fmt: skip
        assert proc.returncode == status, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr and text in proc.stdout


def test_relative_manifest_paths_inside_the_root(demo, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GENOBRAIN_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "c"
    shutil.copytree(Path(demo["manifest"]).parent, root)
    files = {k: root / Path(demo[k]).name for k in KEYS}
    rc, text = run(files, capsys, f"data.root={root}")
    assert rc == 0, text
