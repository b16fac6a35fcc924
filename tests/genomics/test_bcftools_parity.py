"""PersonalHaplotypes against `samtools faidx REF CHR:START-END | bcftools consensus -s S -H h` (subprocess).

A corpus of every case type (SNVs, MNVs, indels, records across region edges, overlaps, duplicate positions,
multi-allelic sites, phased / unphased / missing / half-missing / haploid calls, soft-masked bases, N runs, an
all-haploid contig) is compared per region, sample and haplotype for the default, unphased=iupac (-H 1pIu/2pIu),
missing=N (-M N) and both, and with contig names spelled differently in BED, FASTA and VCF.
We follow bcftools 1.20+ on htslib 1.22+. Two behaviours are older there: bcftools < 1.20 skips a record starting
before the region (we trim it, as 1.20+ does), and htslib < 1.22 reads a haploid GT as unphased (-H 2pIu then applies
it to haplotype 2). Regions and options hitting those are compared against the bcftools bundled in pysam when the
installed one is older; everything else against the installed tools.
"""

import gzip
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pysam
import pytest

from genomics.contigs import ContigError
from genomics.errors import ReferenceMismatch
from genomics.personal import ConsensusWarning, PersonalHaplotypes
from genomics.regions import read_bed

pytestmark = pytest.mark.skipif(
    (shutil.which("bcftools") is None or shutil.which("samtools") is None) and not os.environ.get("CI"),
    reason="bcftools/samtools not installed (apt-get install bcftools samtools tabix); required when CI is set",
)
SAMPLES = ("ph", "un", "hom", "mis", "half", "hap")
OPTIONS = {
    "default": {},
    "iupac": {"unphased": "iupac"},
    "missing": {"missing": "N"},
    "iupac+missing": {"unphased": "iupac", "missing": "N"},
}
# (contig, POS, REF length, ALTs): 'sub' first base changed, 'mnv' every base, 'ins:XY' REF+XY, 'del' REF[0],
# 'del:k' REF[:k], 'lit:X' X, '.' no ALT
RECORDS = [
    ("chr1", 15, 1, ["sub"]), ("chr1", 20, 3, ["mnv"]), ("chr1", 28, 1, ["sub", "lit:T", "lit:C", "ins:GA"]),
    ("chr1", 35, 1, ["sub"]), ("chr1", 35, 1, ["ins:GT"]), ("chr1", 42, 1, ["sub"]), ("chr1", 42, 1, ["mnv"]),
    ("chr1", 50, 1, ["."]), ("chr1", 55, 3, ["del"]),
    ("chr1", 65, 1, ["ins:CAT"]), ("chr1", 72, 4, ["del"]), ("chr1", 80, 2, ["lit:T"]), ("chr1", 90, 5, ["del"]),
    ("chr1", 92, 1, ["sub"]), ("chr1", 100, 1, ["ins:AA"]), ("chr1", 100, 1, ["ins:CC"]), ("chr1", 110, 4, ["del"]),
    ("chr1", 113, 1, ["ins:TTT"]),
    ("chr1", 128, 6, ["del"]), ("chr1", 140, 1, ["sub"]),  # region lead_del starts at 131
    ("chr1", 178, 5, ["del:4", "ins:GG"]),  # region lead_alt starts at 181: ALT reaching into it
    ("chr1", 198, 1, ["sub"]), ("chr1", 205, 1, ["sub"]), ("chr1", 210, 1, ["ins:GC"]), ("chr1", 215, 1, ["sub"]),
    ("chr1", 215, 1, ["ins:AC"]), ("chr1", 257, 6, ["del"]),  # soft-masked 201-260
    ("chr1", 270, 2, ["mnv"]), ("chr1", 280, 2, ["ins:GG"]),  # regions starting at 271 and 281
    ("chr1", 298, 1, ["sub"]), ("chr1", 303, 1, ["lit:A"]), ("chr1", 309, 3, ["del"]), ("chr1", 314, 1, ["sub"]),
    ("chr1", 348, 6, ["del"]), ("chr1", 379, 3, ["mnv"]), ("chr1", 380, 1, ["ins:AAA"]),  # regions ending 350, 380
    ("chr1", 389, 2, ["ins:GG"]),  # REF past the end of region trail_ref (ends 389)
    ("chr1", 398, 12, ["del"]),  # covers region whole_del entirely
    ("chr1", 415, 1, ["sub", "ins:TG"]), ("chr1", 425, 3, ["del", "mnv"]), ("chr1", 433, 2, ["del", "ins:A"]),
    ("chr2", 25, 1, ["sub"]), ("chr2", 40, 1, ["ins:GAT"]), ("chr2", 60, 4, ["del"]),
    ("chrM", 15, 1, ["sub"]), ("chrM", 30, 3, ["del"]), ("chrM", 45, 1, ["ins:CC", "sub"]),
]  # fmt: skip
LEAD = {128, 178, 270, 280, 398}  # records starting before their region: no missing calls (bcftools' memory errors)
# name: (contig, BED start, end, tags): "lead" needs bcftools 1.20+, "haploid" (with iupac) htslib 1.22+
REGIONS = {
    "snv_mnv": ("chr1", 10, 60, ""), "indels": ("chr1", 60, 120, ""), "lead_del": ("chr1", 130, 170, "lead"),
    "lead_alt": ("chr1", 180, 200, "lead"), "soft": ("chr1", 195, 265, ""), "lead_mnv": ("chr1", 270, 300, "lead"),
    "lead_ins": ("chr1", 280, 300, "lead"), "nrun": ("chr1", 295, 320, ""), "trail_del": ("chr1", 320, 350, ""),
    "trail_mnv": ("chr1", 360, 380, ""), "trail_ref": ("chr1", 385, 389, ""), "whole_del": ("chr1", 400, 405, "lead"),
    "multi": ("chr1", 410, 450, ""), "chr2": ("chr2", 20, 80, ""), "mito": ("chrM", 10, 60, "haploid"),
}  # fmt: skip


# --- files -----------------------------------------------------------------------------------------------------
def _reference(seed=7):
    rng = random.Random(seed)
    chr1 = [rng.choice("ACGT") for _ in range(480)]
    chr1[200:260] = [c.lower() for c in chr1[200:260]]  # soft-masked
    chr1[300:310] = "N" * 10  # N run
    return {"chr1": "".join(chr1), "chr2": "".join(rng.choice("ACGT") for _ in range(180)), "chrM": "".join(
        rng.choice("ACGT") for _ in range(120))}  # fmt: skip


def _alt(ref, kind, rng):
    other = lambda c: rng.choice([b for b in "ACGT" if b != c.upper()])  # noqa: E731
    if kind == "sub":
        return other(ref[0]) + ref[1:]
    if kind == "mnv":
        return "".join(other(c) for c in ref)
    if kind in ("del", "."):
        return ref[0] if kind == "del" else "."
    head, _, arg = kind.partition(":")
    return {"ins": lambda: ref + arg, "del": lambda: ref[: int(arg)], "lit": lambda: arg}[head]()


def _gts(i, n_alts, haploid, lead):
    a, b = 1, min(2, n_alts)
    if haploid:
        row = ["1", str(i % 2), str(b), ".", "1", ["1", "0", "."][i % 3]]
    else:
        row = [["0|1", "1|0", f"{a}|{b}"][i % 3], ["0/1", "1/0", f"{b}/{a}"][i % 3], "1|1" if i % 2 else f"{b}|{b}"]
        row += [["./.", ".|.", "."][i % 3], ["0|.", ".|1", "1/.", "./1"][i % 4], ["1", "1", "0", "."][i % 4]]
    if lead:  # no missing alleles at all: neither '.' nor the absent second allele of a haploid call
        row = [g.replace(".", "1") if len(g) == 3 else f"{g}|{g}".replace(".", "1") for g in row]
    return row


def write_vcf(path: Path, records, samples, rename=lambda c: c):
    header = ["##fileformat=VCFv4.2", *(f"##contig=<ID={rename(c)},length={n}>" for c, n in CONTIG_LENGTHS.items())]
    header += ['##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">']
    header += ["\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *samples])]
    body = ["\t".join([rename(c), str(p), ".", ref, alt, ".", ".", ".", "GT", *g]) for c, p, ref, alt, g in records]
    plain = path.with_suffix("")
    plain.write_text("\n".join(header + body) + "\n")
    pysam.tabix_compress(str(plain), str(path), force=True)
    pysam.tabix_index(str(path), preset="vcf", force=True)
    return path


def write_fasta(path: Path, seqs: dict, rename=lambda c: c):
    path.write_text("".join(f">{rename(c)}\n" + "".join(s[i : i + 60] + "\n" for i in range(0, len(s), 60))
                            for c, s in seqs.items()))  # fmt: skip
    pysam.faidx(str(path))
    return path


SEQS = _reference()
CONTIG_LENGTHS = {c: len(s) for c, s in SEQS.items()}
NOCHR = {"chr1": "1", "chr2": "2", "chrM": "MT"}.get


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    require_tools()
    d = tmp_path_factory.mktemp("parity")
    rng, records = random.Random(3), []
    for i, (c, pos, n, kinds) in enumerate(RECORDS):
        ref, alts = SEQS[c][pos - 1 : pos - 1 + n].upper(), []
        for k in kinds:
            alt = _alt(ref, k, rng)
            while alt in (ref, *alts):  # a 'lit' allele that happens to be REF or a repeated 'sub'
                alt = _alt(ref, "sub", rng)
            alts.append(alt)
        gts = _gts(i, len(alts), c == "chrM", pos in LEAD)
        if alts == ["."]:  # no ALT: only REF and missing calls
            gts = [re.sub("[1-9]", "0", g) for g in gts]
        records.append((c, pos, ref, ",".join(alts), gts))
    bed = "".join(f"{c}\t{s}\t{e}\t{name}\n" for name, (c, s, e, _) in REGIONS.items())
    (d / "regions.bed").write_text(bed)
    (d / "regions_nochr.bed").write_text(re.sub(r"^chr(\w)\t", lambda m: NOCHR(m[0][:-1]) + "\t", bed, flags=re.M))
    return {
        "dir": d, "ref": write_fasta(d / "ref.fa", SEQS), "vcf": write_vcf(d / "v.vcf.gz", records, SAMPLES),
        "ref_nochr": write_fasta(d / "ref_nochr.fa", SEQS, NOCHR),
        "vcf_nochr": write_vcf(d / "v_nochr.vcf.gz", records, SAMPLES, NOCHR),
        "regions": read_bed(d / "regions.bed"), "regions_nochr": read_bed(d / "regions_nochr.bed"),
    }  # fmt: skip


# --- oracles -----------------------------------------------------------------------------------------------------
def require_tools() -> None:
    if shutil.which("bcftools") is None or shutil.which("samtools") is None:
        pytest.fail("CI is set but bcftools/samtools are not installed (apt-get install bcftools samtools tabix)")


def tool_versions() -> tuple[tuple[int, int], tuple[int, int]]:
    require_tools()
    out = subprocess.run(["bcftools", "--version"], capture_output=True, text=True, check=True).stdout
    bcf, hts = (re.search(rf"^{w} (\d+)\.(\d+)", out, re.M).groups() for w in ("bcftools", "Using htslib"))
    return tuple(map(int, bcf)), tuple(map(int, hts))


def bcftools_flags(opts: dict, hap: int) -> list[str]:
    flags = ["-H", f"{hap}pIu" if opts.get("unphased") == "iupac" else str(hap)]
    return flags + (["-M", opts["missing"]] if opts.get("missing", "ref") != "ref" else [])


def _sequence(fasta_text: str) -> str:
    return "".join(line for line in fasta_text.splitlines() if not line.startswith(">"))


BUNDLED = """import json, os, sys, pysam.bcftools
jobs, out = json.load(sys.stdin), []
for region_fa, args in jobs:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.write(w, pysam.bcftools.consensus('-f', region_fa, *args).encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = iter(lambda: os.read(r, 65536), b'')
    text = b''.join(chunks).decode()
    os.close(r)
    out.append(text if os.waitpid(pid, 0)[1] == 0 and text else None)
print(json.dumps(out))
"""


def oracle(fasta: Path, vcf: Path, regions, opts: dict, *, tags=None, tmp: Path):
    """{(region index, sample, hap): sequence or None (bcftools crashed)}: installed tools, or the bundled bcftools
    for regions whose tags need a newer version than installed."""
    bcf, hts = tool_versions()
    too_old = {"lead": bcf < (1, 20), "haploid": hts < (1, 22) and opts.get("unphased") == "iupac"}
    out, bundled = {}, []
    for i, r in enumerate(regions):
        spec = f"{r.contig}:{r.start + 1}-{r.end}"
        fa = subprocess.run(["samtools", "faidx", str(fasta), spec], capture_output=True, text=True, check=True).stdout
        use_bundled = any(too_old.get(t) for t in (tags or {}).get(i, ()))
        if use_bundled:
            (tmp / f"region{i}.fa").write_text(fa)
        for s in SAMPLES:
            for hap in (1, 2):
                args = ["-s", s, *bcftools_flags(opts, hap), str(vcf)]
                if use_bundled:
                    bundled.append(((i, s, hap), [str(tmp / f"region{i}.fa"), args]))
                    continue
                p = subprocess.run(["bcftools", "consensus", *args], input=fa, capture_output=True, text=True)
                out[i, s, hap] = _sequence(p.stdout) if p.returncode == 0 else None
    if bundled:
        p = subprocess.run([sys.executable, "-c", BUNDLED], input=json.dumps([j for _, j in bundled]),
                           capture_output=True, text=True, check=True)  # fmt: skip
        for (key, _), text in zip(bundled, json.loads(p.stdout)):
            out[key] = _sequence(text) if text is not None else None
    return out


def ours(fasta, vcf, regions, opts, **kw):
    haps = PersonalHaplotypes(fasta, vcf, regions, **opts, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConsensusWarning)
        return {(i, s, h + 1): seq for i in range(len(regions)) for s in SAMPLES for h, seq in
                enumerate(haps.haplotypes(s, i))}  # fmt: skip


def mismatches(mine, expected, regions):
    return [f"{regions[i].name} {s} hap{h}: ours {mine[i, s, h]!r} bcftools {want!r}"
            for (i, s, h), want in expected.items() if want is not None and mine[i, s, h] != want]  # fmt: skip


def region_tags(regions):
    return {i: REGIONS[r.name][3].split() for i, r in enumerate(regions)}


@pytest.fixture(scope="module")
def default_expected(corpus, tmp_path_factory):
    regions, tmp = corpus["regions"], tmp_path_factory.mktemp("oracle")
    return oracle(corpus["ref"], corpus["vcf"], regions, {}, tags=region_tags(regions), tmp=tmp)


# --- tests -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_case_equals_bcftools_consensus(corpus, tmp_path, name):
    opts, regions = OPTIONS[name], corpus["regions"]
    expected = oracle(corpus["ref"], corpus["vcf"], regions, opts, tags=region_tags(regions), tmp=tmp_path)
    assert None not in expected.values(), [k for k, v in expected.items() if v is None]
    bad = mismatches(ours(corpus["ref"], corpus["vcf"], regions, opts), expected, regions)
    assert not bad, f"{len(bad)}/{len(expected)} haplotypes differ:\n" + "\n".join(bad[:10])


@pytest.mark.parametrize("fasta, vcf, bed", [("ref", "vcf_nochr", "regions_nochr"), ("ref_nochr", "vcf", "regions"),
                                             ("ref", "vcf_nochr", "regions")])  # fmt: skip
def test_contig_names_are_harmonised(corpus, default_expected, caplog, fasta, vcf, bed):
    # chr1/chr2/chrM vs 1/2/MT between the files: the same haplotypes as bcftools on consistently named files
    regions, expected = corpus["regions"], default_expected
    with caplog.at_level(logging.INFO, logger="genomics.contigs"):
        mine = ours(corpus[fasta], corpus[vcf], corpus[bed], {})
    assert not mismatches(mine, expected, regions)
    lines = [r.getMessage() for r in caplog.records if r.name == "genomics.contigs"]
    assert len(lines) == 1 and "harmonised" in lines[0] and ("MT" in lines[0]) and "chrM" in lines[0], lines


def test_random_corpus_equals_bcftools(tmp_path):
    rng, seqs = random.Random(11), {"chr1": SEQS["chr1"]}
    records, samples = [], SAMPLES
    for pos in sorted(rng.sample(range(2, 470), 70)):
        ref = SEQS["chr1"][pos - 1 : pos - 1 + rng.choice([1, 1, 2, 3, 5])].upper()
        kinds = rng.sample(["sub", "mnv", "ins:T", "ins:GCA", "del", "del:2", "lit:G"], rng.choice([1, 1, 2, 3]))
        alts = list(dict.fromkeys(a for a in (_alt(ref, k, rng) for k in kinds) if a and a != ref))
        if alts:
            records.append(("chr1", pos, ref, ",".join(alts), _gts(rng.randrange(12), len(alts), False, False)))
    fasta, vcf = write_fasta(tmp_path / "r.fa", seqs), write_vcf(tmp_path / "r.vcf.gz", records, samples)
    (tmp_path / "r.bed").write_text("".join(f"chr1\t{s}\t{s + rng.randrange(3, 90)}\n" for s in
                                            sorted(rng.sample(range(0, 380), 12))))  # fmt: skip
    regions = read_bed(tmp_path / "r.bed")
    starts_before = {i: ["lead"] for i, r in enumerate(regions) if any(p - 1 < r.start < p - 1 + len(ref)
                                                                      for _, p, ref, _, _ in records)}  # fmt: skip
    for opts in OPTIONS.values():
        expected = oracle(fasta, vcf, regions, opts, tags=starts_before, tmp=tmp_path)
        defined = [v for v in expected.values() if v is not None]  # bcftools may crash on odd edge records
        assert len(defined) > 0.8 * len(expected)
        assert not mismatches(ours(fasta, vcf, regions, opts), expected, regions), opts


def test_cli_writes_one_fasta_per_sample(corpus, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "genomics.haplotypes", f"reference={corpus['ref']}", f"vcf={corpus['vcf_nochr']}",
           f"regions={corpus['dir'] / 'regions.bed'}", f"out={out}", "samples=ph,mis", "missing=N"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert p.returncode == 0, p.stderr
    assert sorted(f.name for f in out.iterdir()) == ["mis.fa", "ph.fa"]  # no temp files left
    assert "harmonised" in p.stderr
    text = (out / "ph.fa").read_text()
    names = [line[1:] for line in text.splitlines() if line.startswith(">")]
    assert names == [f"{r}|hap{h}" for r in REGIONS for h in (1, 2)]
    assert max(len(line) for line in text.splitlines()) == 60
    records = dict(re.findall(r">(\S+)\n([^>]*)", text))  # (an all-deleted haplotype is a header alone)
    haps = PersonalHaplotypes(corpus["ref"], corpus["vcf"], corpus["regions"], missing="N")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConsensusWarning)
        for i, r in enumerate(corpus["regions"]):
            got = tuple(records[f"{r.name}|hap{h}"].replace("\n", "") for h in (1, 2))
            assert got == haps.haplotypes("ph", i)


@pytest.mark.parametrize("args, message", [
    (["vcf=x.vcf.gz"], "missing argument"), (["reference=a", "vcf=b", "regions=c", "out=d", "colour=red"], "unknown"),
    (["reference=a", "vcf=b", "regions=c", "out=d", "unphased=maybe"], "unphased must be"), (["oops"], "key=value"),
    (["reference=/nonexistent.fa", "vcf=b", "regions=c", "out=d"], "reference FASTA not found"),
])  # fmt: skip
def test_cli_bad_arguments_exit_2_without_traceback(args, message):
    p = subprocess.run([sys.executable, "-m", "genomics.haplotypes", *args], capture_output=True, text=True,
                       cwd=Path(__file__).parents[2])  # fmt: skip
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_region_on_a_contig_nobody_has_is_an_error(corpus, tmp_path):
    bed = tmp_path / "bad.bed"
    bed.write_text("chr1\t10\t20\tok\nchr9\t5\t50\tlost\n")
    haps = PersonalHaplotypes(corpus["ref"], corpus["vcf"], read_bed(bed), bed=bed)
    with pytest.raises(ContigError, match=r"bad.bed line 2: region lost \(chr9:6-50\).*'chr9'.*ref.fa.*v.vcf.gz"):
        haps.haplotypes("ph", 0)
    p = subprocess.run([sys.executable, "-m", "genomics.haplotypes", f"reference={corpus['ref']}",
                        f"vcf={corpus['vcf']}", f"regions={bed}", f"out={tmp_path / 'o'}"], capture_output=True,
                       text=True, cwd=Path(__file__).parents[2])  # fmt: skip
    assert p.returncode == 2 and "line 2: region lost" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "o").exists()


def test_ref_mismatch_names_site_alleles_and_files(corpus, tmp_path):
    lines = gzip.open(corpus["vcf"], "rt").read().splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("chr2\t25\t"))
    cols = lines[i].split("\t")
    cols[3], cols[4] = ("A", "C") if cols[3] != "A" else ("C", "G")
    lines[i] = "\t".join(cols)
    (tmp_path / "bad.vcf").write_text("\n".join(lines) + "\n")
    pysam.tabix_compress(str(tmp_path / "bad.vcf"), str(tmp_path / "bad.vcf.gz"))
    pysam.tabix_index(str(tmp_path / "bad.vcf.gz"), preset="vcf")
    regions = [r for r in corpus["regions"] if r.name == "chr2"]
    haps = PersonalHaplotypes(corpus["ref"], tmp_path / "bad.vcf.gz", regions)
    with pytest.raises(ReferenceMismatch, match=rf"chr2:25: VCF REF '{cols[3]}'.*'{cols[4]}'.*bad.vcf.gz.*ref.fa"):
        haps.haplotypes("hom", 0)
