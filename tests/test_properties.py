"""Property-based tests (hypothesis): on arbitrary input the tokenizer/alphabet, the BED parser, the manifest reader
and the cohort's VCF/FASTA handling either return a valid result or raise the project's own error (fusion.errors
USER_ERRORS), never an unrelated exception. pysam readers run in a worker subprocess, so a crash in htslib is caught
as a failure of that input instead of killing the test run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusion.cohort import load_cohort
from fusion.errors import USER_ERRORS
from genomics.alphabet import A_ID, N_ID, PAD_ID, UNK_ID, encode, pad_left, reverse_complement
from genomics.regions import parse_bed, read_bed

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
KEYS = ("manifest", "vcf", "reference", "regions", "atlas", "atlas_coords")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from fusion.demo import generate_demo_cohort

    return generate_demo_cohort(tmp_path_factory.mktemp("pcohort") / "demo", n_subjects=6, n_volumes=8,
                                n_regions=3, region_length=200, variants_per_region=6)  # fmt: skip


# ------------------------------------------------------------------------------------------- tokenizer / alphabet


@FAST
@given(st.text(), st.sampled_from(["PAD", "N"]))
def test_encode_maps_every_character_to_one_valid_id(seq, n_as):
    ids = encode(seq, n_as)
    assert ids.dtype == np.int64 and ids.shape == (len(seq),)
    for ch, i in zip(seq, ids.tolist()):
        upper = ch.upper() if ch in "acgtn" else ch
        if upper in "ACGT":
            assert i == A_ID + "ACGT".index(upper)
        elif upper == "N":
            assert i == (PAD_ID if n_as == "PAD" else N_ID)
        else:
            assert i == UNK_ID


@FAST
@given(st.text())
def test_reverse_complement_is_an_involution_and_keeps_length(seq):
    rc = reverse_complement(seq)
    assert len(rc) == len(seq) and reverse_complement(rc) == seq


@FAST
@given(st.lists(st.integers(0, 11), max_size=300), st.integers(1, 400))
def test_pad_left_gives_exactly_the_length(ids, length):
    out = pad_left(np.asarray(ids, dtype=np.int64), length)
    assert out.shape == (length,)
    if len(ids) <= length:
        assert out[length - len(ids) :].tolist() == ids and (out[: length - len(ids)] == PAD_ID).all()


# ------------------------------------------------------------------------------------------------------ BED parser

bed_line = st.one_of(
    st.tuples(st.sampled_from(["chr1", "1", "chrM", "MT", "", "chr 1", "chrX"]), st.integers(-5, 60_000),
              st.integers(-5, 60_000), st.sampled_from(["", "r1", ".", "a b", "r1"]))
    .map(lambda t: "\t".join(str(x) for x in t).rstrip("\t")),
    st.text(max_size=40),
)  # fmt: skip


@FAST
@given(st.one_of(st.lists(bed_line, max_size=12).map("\n".join).map(str.encode), st.binary(max_size=300)))
def test_bed_parser_returns_valid_regions_or_named_problems(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("bed") / "regions.bed"
    path.write_bytes(content)
    regions, problems = parse_bed(path)
    for r in regions:
        assert 0 <= r.start < r.end and r.line >= 1 and r.name and isinstance(r.contig, str)
    assert all(p.startswith(str(path)) for p in problems)
    try:
        assert read_bed(path) == regions and not problems
    except USER_ERRORS as err:
        assert problems and str(len(problems)) in str(err)
    from fusion.cohort_checks import check_regions

    found = []
    kept = check_regions(path, {"chr1": 50_000, "chrM": 16_569}, {"chr1"}, Path("x.vcf"), found)
    assert all(r.end <= 50_000 or r.contig in ("chrM", "MT") for r in kept)


# ------------------------------------------------------------------------------------------------- manifest reader

cell = st.one_of(st.sampled_from(["sub-0001", "sub-0002", " sub-0003 ", "", "NA", "train", "TEST", "val", "x", "0012",
                                  "fmri/sub-0001_bold.nii.gz", "../../etc/passwd", "/dev/null", "1.5", "nan"]),
                 st.text(max_size=12))  # fmt: skip
column = st.sampled_from(["subject_id", "fmri", "split", "age", "sex", " subject_id", "", "split"])


@FAST
@given(st.lists(column, min_size=1, max_size=5), st.lists(st.lists(cell, min_size=0, max_size=6), max_size=6))
def test_manifest_reader_returns_a_cohort_or_a_cohort_error(cohort, tmp_path_factory, header, rows):
    folder = tmp_path_factory.mktemp("manifest")
    (folder / "fmri").symlink_to(Path(cohort["manifest"]).parent / "fmri")
    width = len(header)
    table = pd.DataFrame([(r + [""] * width)[:width] for r in rows], columns=header)
    table.to_csv(folder / "manifest.csv", index=False)
    check_manifest(cohort, folder / "manifest.csv")


@FAST
@given(st.binary(max_size=400))
def test_manifest_reader_on_arbitrary_bytes(cohort, tmp_path_factory, content):
    path = tmp_path_factory.mktemp("raw") / "manifest.tsv"
    path.write_bytes(content)
    check_manifest(cohort, path)


def check_manifest(cohort, manifest: Path) -> None:
    files = {k: cohort[k] for k in KEYS} | {"manifest": manifest}
    try:
        result, report = load_cohort(**files)
    except USER_ERRORS as err:
        assert str(err)
        return
    subjects = result.subjects
    assert len(subjects) and subjects["subject_id"].is_unique and set(subjects["split"]) <= {"train", "val", "test"}
    assert all(Path(f).is_file() for f in subjects["fmri"]) and (subjects["n_volumes"] >= 2).all()


# ------------------------------------------------------------------ VCF / FASTA through pysam, in a worker process

WORKER = r"""
import json, sys
from fusion.cohort import load_cohort
from fusion.errors import USER_ERRORS
for line in sys.stdin:
    job = json.loads(line)
    try:
        load_cohort(**job["files"], checks="full", cache_dir=job["cache"])
        out = {"outcome": "ok"}
    except USER_ERRORS as err:
        out = {"outcome": "project error", "message": str(err)[:200]}
    except Exception as err:
        out = {"outcome": "other", "type": type(err).__name__, "message": str(err)[:500]}
    print(json.dumps(out), flush=True)
"""


class Worker:
    """One python process running load_cohort on each job; restarted after a crash (which is reported)."""

    def __init__(self):
        self.proc = None

    def run(self, files: dict, cache: Path) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True)  # fmt: skip
        self.proc.stdin.write(json.dumps({"files": {k: str(v) for k, v in files.items()}, "cache": str(cache)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            return {"outcome": "crash", "returncode": self.proc.wait(timeout=60)}
        return json.loads(line)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


def vcf_text(cohort) -> list[str]:
    import pysam

    with pysam.VariantFile(str(cohort["vcf"])) as vf:
        return str(vf.header).splitlines() + [str(rec).rstrip("\n") for rec in list(vf)[:12]]


edit = st.tuples(st.sampled_from(["delete", "duplicate", "replace_field", "insert", "truncate"]), st.integers(0, 10**6),
                 st.integers(0, 12), st.text(max_size=15))  # fmt: skip


def mutate(lines: list[str], edits) -> str:
    lines = list(lines)
    for kind, where, field, text in edits:
        i = where % max(len(lines), 1)
        if not lines:
            lines = [text]
        elif kind == "delete":
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, lines[i])
        elif kind == "replace_field":
            cols = lines[i].split("\t")
            cols[field % len(cols)] = text
            lines[i] = "\t".join(cols)
        elif kind == "insert":
            lines.insert(i, text)
        else:
            joined = "\n".join(lines)
            return joined[: where % (len(joined) + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(edit, min_size=1, max_size=4))
def test_mutated_vcf_gives_a_cohort_or_a_project_error(cohort, worker, tmp_path_factory, edits):
    folder = tmp_path_factory.mktemp("vcf")
    (folder / "genotypes.vcf").write_text(mutate(vcf_text(cohort), edits))
    files = {k: cohort[k] for k in KEYS} | {"vcf": folder / "genotypes.vcf"}
    result = worker.run(files, folder / "cache")
    assert result["outcome"] in ("ok", "project error"), result


fasta = st.lists(st.one_of(st.sampled_from([">chr1", ">chr2", ">", "> chr1 extra", "ACGTN" * 8, "acgtRYKM", ""]),
                           st.text(max_size=30)), max_size=10).map(lambda lines: "\n".join(lines) + "\n")  # fmt: skip


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(fasta, st.binary(max_size=300).map(lambda b: b.decode("latin-1"))))
def test_arbitrary_fasta_gives_a_cohort_or_a_project_error(cohort, worker, tmp_path_factory, text):
    folder = tmp_path_factory.mktemp("fasta")
    (folder / "reference.fa").write_bytes(text.encode("latin-1", errors="replace"))  # no .fai: indexed in the cache
    files = {k: cohort[k] for k in KEYS} | {"reference": folder / "reference.fa"}
    result = worker.run(files, folder / "cache")
    assert result["outcome"] in ("ok", "project error"), result
