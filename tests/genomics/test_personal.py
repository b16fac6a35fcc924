"""Personal haplotypes: hand-made apply_variants cases, parity with bcftools consensus (bundled in pysam), transform.

The installed bcftools / samtools are compared on a corpus of every case type in test_bcftools_parity.py."""

import pickle
import random
import warnings
from collections import Counter

import pysam
import pysam.bcftools
import pytest
import torch

from genomics.alphabet import A_ID, C_ID, G_ID, PAD_ID, T_ID
from genomics.contigs import ContigError, ContigNames, contig_key, match_contig
from genomics.errors import GenomicsFileNotFound, ReferenceMismatch, SampleNotFound
from genomics.fasta_io import write_fasta
from genomics.personal import ConsensusWarning, PersonalHaplotypes, Variant, apply_variants
from genomics.regions import Region, check_contigs, naming_hint, parse_bed, read_bed
from genomics.transforms import PersonalSequenceTokens

REF = "ACGTACGTAC"  # region starting at 100


def V(pos1, ref, *alts):  # 1-based VCF position, like a VCF line
    return Variant("chr1", pos1 - 1, ref, alts)


def apply(records, alleles, seq=REF, start=100, counts=None):
    return apply_variants(seq, start, records, alleles, counts=counts)


def test_snv_insertion_deletion():
    assert apply([V(101, "A", "G")], [1]) == "GCGTACGTAC"
    assert apply([V(103, "G", "GTT")], [1]) == "ACGTTTACGTAC"
    assert apply([V(103, "GTA", "G")], [1]) == "ACGCGTAC"
    assert apply([V(101, "A", "G"), V(103, "G", "GTT"), V(106, "CGT", "C")], [1, 1, 1]) == "GCGTTTACAC"


def test_reference_and_missing_calls_keep_reference():
    c = Counter()
    assert apply([V(101, "A", "G"), V(102, "C", "T")], [0, None], counts=c) == REF
    assert c == Counter(ref=1, missing=1)


def test_multiallelic_alt_index():
    rec = V(102, "C", "G", "CTTT", "T")
    assert apply([rec], [1]) == "AGGTACGTAC"
    assert apply([rec], [2]) == "ACTTTGTACGTAC"
    assert apply([rec], [3]) == "ATGTACGTAC"
    with pytest.raises(ValueError, match="chr1:102.*allele 4"):
        apply([rec], [4])


def test_overlapping_variant_is_skipped_with_warning():
    c = Counter()
    with pytest.warns(ConsensusWarning, match="chr1:104 .*overlaps"):
        seq = apply([V(103, "GTA", "G"), V(104, "T", "C")], [1, 1], counts=c)
    assert seq == "ACGCGTAC" and c["overlap"] == 1 and c["applied"] == 1
    # not applied on this haplotype -> no overlap
    assert apply([V(103, "GTA", "G"), V(104, "T", "C")], [0, 1]) == "ACGCACGTAC"
    # bcftools allows an insertion anchored on the last base of a preceding SNV
    assert apply([V(101, "A", "G"), V(101, "A", "ATT")], [1, 1]) == "GTTCGTACGTAC"


def test_soft_masked_bases_keep_case():
    seq = "ACgtacGTAC"
    assert apply([V(104, "T", "C")], [1], seq=seq) == "ACgcacGTAC"
    assert apply([V(103, "G", "GAA")], [1], seq=seq) == "ACgaatacGTAC"
    assert apply([V(102, "C", "T")], [1], seq=seq) == "ATgtacGTAC"


def test_variants_at_region_edges_are_trimmed_to_the_region():
    c = Counter()
    # first and last base of the region are applied; records reaching outside are trimmed as bcftools 1.20+ does
    assert apply([V(101, "A", "T"), V(110, "C", "CG")], [1, 1]) == "TCGTACGTACG"
    assert apply([V(100, "NA", "N"), V(110, "CA", "C")], [1, 1], counts=c) == REF[1:]  # the A deleted, C kept
    assert c["trimmed"] == 2 and c["applied"] == 2
    assert apply([V(99, "NNAC", "NNA")], [1]) == "AGTACGTAC"  # the ALT reaches into the region: C deleted
    assert apply([V(100, "NA", "NAGG")], [1]) == "AGGCGTACGTAC"  # an insertion anchored on the region's first base
    assert apply([V(109, "ACGT", "A")], [1]) == REF[:9]  # deletion cut at the end
    assert apply([V(95, "N" * 5 + REF + "T", "N")], [1]) == ""  # the whole region deleted


def test_symbolic_alts_are_skipped():
    c = Counter()
    assert apply([V(102, "C", "<DEL>"), V(104, "T", "*")], [1, 1], counts=c) == REF
    assert c["symbolic"] == 2


def test_ref_mismatch_names_the_site():
    with pytest.raises(ReferenceMismatch, match="chr1:102.*different genome builds"):
        apply([V(102, "G", "A")], [1])


# --- a small VCF on disk ---------------------------------------------------------------------------------------------
def _write_cohort(tmp_path, seed=0, n_samples=5, phased=True, haploid=False):
    rng = random.Random(seed)
    seq = "".join(rng.choice("ACGT") for _ in range(400))
    seq = seq[:120] + seq[120:160].lower() + seq[160:]
    (tmp_path / "ref.fa").write_text(">chr1\n" + "\n".join(seq[i : i + 60] for i in range(0, 400, 60)) + "\n")
    pysam.faidx(str(tmp_path / "ref.fa"))
    (tmp_path / "regions.bed").write_text("chr1\t50\t150\tr1\nchr1\t200\t300\tr2\n")
    hdr = pysam.VariantHeader()
    hdr.add_line("##contig=<ID=chr1,length=400>")
    hdr.add_line('##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">')
    samples = [f"s{i}" for i in range(n_samples)]
    for s in samples:
        hdr.add_sample(s)
    sites = []
    for pos in sorted(rng.sample([*range(50, 147), *range(200, 297)], 30)):  # fully inside the regions
        ref = seq[pos : pos + rng.choice([1, 1, 2, 3])].upper()
        alts = rng.choice([("A" if ref[0] != "A" else "C",), (ref + "GT",), (ref[0],) if len(ref) > 1 else ("G",)])
        if ref in alts:
            continue
        sites.append((pos, ref, alts))
    with pysam.VariantFile(str(tmp_path / "v.vcf.gz"), "wz", header=hdr) as vf:
        for pos, ref, alts in sites:
            rec = vf.new_record(contig="chr1", start=pos, alleles=(ref, *alts))
            for s in samples:
                rec.samples[s]["GT"] = (rng.choice([0, 1, None]), rng.choice([0, 1]))
                rec.samples[s].phased = phased
            if haploid:  # the last sample is haploid here (e.g. chrX of a male)
                rec.samples[samples[-1]]["GT"] = (rng.choice([0, 1]),)
            vf.write(rec)
    pysam.tabix_index(str(tmp_path / "v.vcf.gz"), preset="vcf", force=True)
    return seq, samples


def _bcftools(tmp_path, seq, region, sample, hap):
    fa = tmp_path / "region.fa"
    fa.write_text(f">chr1:{region.start + 1}-{region.end}\n{seq[region.start : region.end]}\n")
    out = pysam.bcftools.consensus("-f", str(fa), "-s", sample, "-H", str(hap), str(tmp_path / "v.vcf.gz"))
    return "".join(out.splitlines()[1:])


@pytest.mark.parametrize("seed", range(4))
def test_parity_with_bcftools_consensus(tmp_path, seed):
    # random SNVs/indels/overlaps, missing calls, soft-masked bases; odd seeds: unphased and a haploid sample
    seq, samples = _write_cohort(tmp_path, seed, phased=seed % 2 == 0, haploid=seed % 2 == 1)
    haps = PersonalHaplotypes(tmp_path / "ref.fa", tmp_path / "v.vcf.gz", read_bed(tmp_path / "regions.bed"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConsensusWarning)
        for i, region in enumerate(haps.regions):
            for s in samples:
                mine = haps.haplotypes(s, i)
                assert mine == tuple(_bcftools(tmp_path, seq, region, s, h) for h in (1, 2)), (s, region)


@pytest.mark.filterwarnings("ignore:.*overlaps a variant")
def test_unphased_genotypes_warn_once_naming_the_sample(tmp_path):
    _write_cohort(tmp_path, 1, phased=False)
    haps = PersonalHaplotypes(tmp_path / "ref.fa", tmp_path / "v.vcf.gz", read_bed(tmp_path / "regions.bed"))
    with pytest.warns(ConsensusWarning, match="sample 's0' has unphased"):
        haps.haplotypes("s0", 0)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".*unphased", ConsensusWarning)
        haps.haplotypes("s0", 1)


def test_bed_problems_name_the_line(tmp_path):
    bed = tmp_path / "r.bed"
    bed.write_text("# header\nchr1\t10\t20\nchr1\t30\t25\nchr1\tx\t40\nchr2\t5\n")
    regions, problems = parse_bed(bed)
    assert [r.line for r in regions] == [2]
    assert [p.split(":")[1] for p in problems] == ["3", "4", "5"]


@pytest.mark.filterwarnings("ignore:.*overlaps a variant")
def test_transform_shapes_padding_and_pickling(tmp_path):
    _write_cohort(tmp_path, 2)
    t = PersonalSequenceTokens(tmp_path / "ref.fa", tmp_path / "v.vcf.gz", read_bed(tmp_path / "regions.bed"))
    t = pickle.loads(pickle.dumps(t))  # nothing open yet
    x = t("s1")
    assert x.dtype == torch.long and x.shape == (2, 2, t.length) and t.length >= 100
    assert x.max() <= T_ID and set(x.unique().tolist()) <= {PAD_ID, A_ID, C_ID, G_ID, T_ID}
    hap = t.haplotypes.haplotypes("s1", 0)[0]
    assert (x[0, 0, : t.length - len(hap)] == PAD_ID).all()  # left padding
    assert t("s3").shape == x.shape  # same L for every subject
    t2 = pickle.loads(pickle.dumps(t))  # after use: handles dropped, reopened lazily
    assert torch.equal(t2("s1"), x)
    short = PersonalSequenceTokens(
        tmp_path / "ref.fa", tmp_path / "v.vcf.gz", read_bed(tmp_path / "regions.bed"), max_len=64
    )
    assert short("s1").shape == (2, 2, 64)
    with pytest.raises(KeyError, match="'nobody'.*v.vcf.gz"):
        t("nobody")


@pytest.mark.filterwarnings("ignore:.*overlaps a variant")
def test_unindexed_plain_vcf_gives_the_same_haplotypes(tmp_path):
    _write_cohort(tmp_path, 5)
    plain = tmp_path / "v.vcf"
    with (
        pysam.VariantFile(str(tmp_path / "v.vcf.gz")) as src,
        pysam.VariantFile(str(plain), "w", header=src.header) as out,
    ):
        for rec in src:
            out.write(rec)
    indexed = PersonalHaplotypes(tmp_path / "ref.fa", tmp_path / "v.vcf.gz", read_bed(tmp_path / "regions.bed"))
    unindexed = PersonalHaplotypes(tmp_path / "ref.fa", plain, read_bed(tmp_path / "regions.bed"))
    with pytest.warns(ConsensusWarning, match="no index"):
        unindexed.region_genotypes(0)
    for i in range(2):
        for s in ("s0", "s3"):
            assert unindexed.haplotypes(s, i) == indexed.haplotypes(s, i)
    assert unindexed.max_length() == indexed.max_length()


# --- constructor, options, contig naming, FASTA writing ---------------------------------------------------------------
def test_regions_must_be_parsed_and_options_checked(tmp_path):
    _write_cohort(tmp_path, 0)
    with pytest.raises(TypeError, match="read_bed"):
        PersonalHaplotypes(tmp_path / "ref.fa", tmp_path / "v.vcf.gz", tmp_path / "regions.bed")
    regions = read_bed(tmp_path / "regions.bed")
    with pytest.raises(ValueError, match="unphased must be"):
        PersonalHaplotypes(tmp_path / "ref.fa", tmp_path / "v.vcf.gz", regions, unphased="random")
    with pytest.raises(ValueError, match="missing must be"):
        PersonalHaplotypes(tmp_path / "ref.fa", tmp_path / "v.vcf.gz", regions, missing="NN")
    haps = PersonalHaplotypes(tmp_path / "ref.fa", tmp_path / "v.vcf.gz", regions, samples=["s3", "s1"])
    assert haps.samples == ["s3", "s1"]
    with pytest.raises(SampleNotFound, match=r"\['nobody'\] are not samples of the VCF .*v.vcf.gz"):
        PersonalHaplotypes(tmp_path / "ref.fa", tmp_path / "v.vcf.gz", regions, samples=["nobody"]).sample_index("s0")
    with pytest.raises(GenomicsFileNotFound, match="VCF not found: .*absent.vcf.gz"):
        PersonalHaplotypes(tmp_path / "ref.fa", tmp_path / "absent.vcf.gz", regions).sample_index("s0")
    assert issubclass(SampleNotFound, KeyError) and issubclass(GenomicsFileNotFound, FileNotFoundError)


def test_contig_names_match_across_spellings():
    assert [contig_key(c) for c in ("chr1", "1", "chrM", "MT", "M", "chrMT", "Chr2")] == ["1", "1", *["MT"] * 4, "2"]
    assert match_contig("1", ["chr1", "chr2"]) == "chr1" and match_contig("chrM", ["1", "MT"]) == "MT"
    assert match_contig("chr3", ["chr1"]) is None and match_contig("chr1", ["chr1", "1"]) == "chr1"
    with pytest.raises(ContigError, match="several"):
        match_contig("chr1", ["1", "Chr1"])
    regions = [Region("1", 0, 10, "a", 1), Region("MT", 0, 10, "m", 2), Region("5", 0, 10, "x", 3)]
    names = ContigNames.resolve(regions[:2], ["chr1", "chrM"], ["1", "MT"])
    assert (names.fasta("1"), names.vcf("1"), names.fasta("MT")) == ("chr1", "1", "chrM")
    with pytest.raises(ContigError, match=r"r.bed line 3: region x \(5:1-10\): contig '5' is in neither f.fa or v.vcf"):
        ContigNames.resolve(regions, ["chr1", "chrM"], ["1"], bed="r.bed", fasta="f.fa", vcf="v.vcf")
    assert naming_hint(["chrM"], ["MT"]).startswith("hint: 'chrM' exists as 'MT'")
    assert check_contigs(regions[:2], {"chr1": 5, "chrM": 20}, bed="b", source="f", aliases=True) == [
        "b:1: region 1:1-10 ends past the end of chr1 (5 bp in f)"
    ]
    assert len(check_contigs(regions[:2], {"chr1": 50, "chrM": 20}, bed="b", source="f")) == 2  # exact names only


def test_fasta_written_atomically_in_60_base_lines(tmp_path):
    path = write_fasta(tmp_path / "o" / "x.fa", [("a|hap1", "A" * 130), ("a|hap2", "")])
    assert path.read_text() == ">a|hap1\n" + "A" * 60 + "\n" + "A" * 60 + "\n" + "A" * 10 + "\n>a|hap2\n"

    def broken():
        yield "b|hap1", "ACGT"
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_fasta(path, broken())
    assert path.read_text().startswith(">a|hap1") and [p.name for p in path.parent.iterdir()] == ["x.fa"]
