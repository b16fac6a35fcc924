"""genomics.genotypes / genomics.plink: PLINK 2 and PLINK 1 sets written by Debian's `plink2` from a VCF give the
dosages read from that VCF (missing calls, multi-allelic sites split per ALT, indels, contigs spelled 'chr1' vs '1');
the format is told by the siblings; malformed PLINK text files are errors naming the file and line."""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pysam
import pytest

from genomics.dosage import read_dosages
from genomics.errors import GenomicsInputError
from genomics.genotypes import genotype_format, open_genotypes
from genomics.plink import read_variant_table
from genomics.regions import Region

needs_plink2 = pytest.mark.skipif(
    (shutil.which("plink2") is None or shutil.which("bcftools") is None) and not os.environ.get("CI"),
    reason="plink2/bcftools not installed (apt-get install plink2 bcftools); required when CI is set",
)

# diploid calls only: PLINK stores a haploid call as homozygous (genomics.genotypes' docstring)
VCF = """##fileformat=VCFv4.2
##contig=<ID=chr1,length=1000>
##contig=<ID=chr2,length=1000>
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ta\tb\tc\td\te
chr1\t11\trs1\tA\tG\t.\t.\t.\tGT\t0|0\t0|1\t1|1\t./.\t1|0
chr1\t21\trs2\tC\tT,G\t.\t.\t.\tGT\t1|2\t2|2\t0/1\t.|.\t0|0
chr1\t31\trs3\tG\tGA\t.\t.\t.\tGT\t1|1\t0|0\t1|0\t0|0\t0/1
chr1\t41\trs4\tTCA\tT\t.\t.\t.\tGT\t0|1\t1|1\t0|0\t0|1\t./.
chr1\t200\trs5\tA\tC\t.\t.\t.\tGT\t1|1\t1|1\t1|1\t1|1\t1|1
chr2\t5\trs6\tC\tA,G,T\t.\t.\t.\tGT\t3|1\t2|0\t0|0\t1|1\t3|3
chr2\t60\trs7\tG\tC\t.\t.\t.\tGT\t0|0\t0|0\t0|0\t0|0\t0|0
"""
REGIONS = [Region("chr1", 0, 50, "r1"), Region("chr1", 5, 35, "overlap"), Region("2", 0, 100, "r2")]


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture(scope="module")
def genotype_sets(tmp_path_factory) -> dict[str, Path]:
    """The VCF and plink2's conversions: .pgen (multi-allelic kept), the same with a zstd-compressed .pvar.zst
    (`--make-pgen vzs`), and .bed (after `bcftools norm -m-`)."""
    d = tmp_path_factory.mktemp("plink")
    plain = d / "g.vcf"
    plain.write_text(VCF)
    vcf = Path(pysam.tabix_index(str(plain), preset="vcf", force=True))
    sh("plink2", "--vcf", str(vcf), "--make-pgen", "--out", str(d / "g2"))
    sh("plink2", "--vcf", str(vcf), "--make-pgen", "vzs", "--out", str(d / "g2z"))
    sh("bcftools", "norm", "-m-", str(vcf), "-Oz", "-o", str(d / "split.vcf.gz"))
    sh("plink2", "--vcf", str(d / "split.vcf.gz"), "--make-bed", "--out", str(d / "g1"))
    return {"vcf": vcf, "pgen": d / "g2.pgen", "pgen_zst": d / "g2z.pgen", "bed": d / "g1.bed"}


@needs_plink2
@pytest.mark.parametrize("fmt", ["pgen", "pgen_zst", "bed"])
def test_plink_dosages_equal_the_vcf(fmt, genotype_sets):
    vcf = read_dosages(genotype_sets["vcf"], REGIONS)
    table = read_dosages(genotype_sets[fmt], REGIONS)
    expected = np.array(
        [[0, 1, 2, np.nan, 1], [1, 0, 1, np.nan, 0], [1, 2, 0, np.nan, 0], [2, 0, 1, 0, 1], [1, 2, 0, 1, np.nan]]
    )  # the chr1 sites of the regions: rs1, rs2 (T), rs2 (G), rs3, rs4
    np.testing.assert_array_equal(vcf.dosages[:5], expected.astype(np.float32))
    assert table.samples == vcf.samples == ["a", "b", "c", "d", "e"]
    assert [(s.pos, s.id, s.ref, s.alt) for s in table.sites] == [(s.pos, s.id, s.ref, s.alt) for s in vcf.sites]
    assert len(vcf.sites) == 9  # rs1, rs2 x2, rs3, rs4, rs6 x3, rs7 (rs5 is outside, overlapping regions count once)
    np.testing.assert_array_equal(table.dosages, vcf.dosages)


@needs_plink2
def test_plink1_bim_keeps_alt_as_a1_and_sources_agree(genotype_sets):
    """What genomics.plink assumes of `plink2 --make-bed`: .bim column 5 (A1) = ALT, column 6 (A2) = REF."""
    bim = genotype_sets["bed"].with_suffix(".bim").read_text().splitlines()
    assert bim[0].split("\t")[4:] == ["G", "A"]  # rs1: REF A, ALT G
    with open_genotypes(genotype_sets["bed"]) as bed, open_genotypes(genotype_sets["pgen"]) as pgen:
        assert bed.format == "bed" and pgen.format == "pgen"
        assert bed.samples_file.suffix == ".fam" and pgen.variants_file.suffix == ".pvar"
        first = next(pgen.variants(REGIONS))[1]
        assert (first.contig, first.pos, first.ref, first.alts) == ("1", 11, "A", ("G",))
        assert pgen.variants_file.read_text().splitlines()[first.line - 1].split("\t")[:3] == ["1", "11", "rs1"]
        sites = [(v.pos, v.ref, v.alts) for _, v in pgen.variants(REGIONS)]
        assert (5, "C", ("A", "G", "T")) in sites and len(sites) == 9  # rs1-rs4, rs1-rs3 (the overlap), rs6, rs7
        assert len(list(pgen.variants(REGIONS, limit=4))) == 4
        (variant, alleles), *_ = pgen.genotypes([Region("chr2", 4, 5, "one")])
        assert variant.id == "rs6" and alleles.shape == (5, 2)
        assert sorted(alleles[0].tolist()) == [1, 3] and (alleles[3] == 1).all()


def test_format_from_siblings_never_takes_a_regions_bed(tmp_path):
    bed = tmp_path / "regions.bed"
    bed.write_text("chr1\t0\t100\tr1\n")
    with pytest.raises(GenomicsInputError, match=r"regions\.bed: a PLINK 1 \.bed needs regions\.bim and regions\.fam"):
        genotype_format(bed)
    (tmp_path / "regions.bim").write_text("1\trs1\t0\t11\tG\tA\n")
    (tmp_path / "regions.fam").write_text("0\ta\t0\t0\t0\t-9\n")
    with pytest.raises(GenomicsInputError, match="not a variant-major PLINK 1 .bed"):
        open_genotypes(bed)
    (tmp_path / "x.pgen").write_bytes(b"")
    with pytest.raises(GenomicsInputError, match=r"needs x\.pvar and x\.psam beside it \(the variants may be x\.pvar"):
        genotype_format(tmp_path / "x.pgen")
    (tmp_path / "x.pvar.zst").write_bytes(b"")
    with pytest.raises(GenomicsInputError, match=r"a PLINK 2 \.pgen needs x\.psam beside it"):
        genotype_format(tmp_path / "x.pgen")  # the compressed variant file counts
    (tmp_path / "x.psam").write_text("#IID\na\n")
    assert genotype_format(tmp_path / "x.pgen") == "pgen"
    (tmp_path / "regions.bim.zst").write_bytes(b"")  # only a .pvar may be compressed (plink2's vzs)
    (tmp_path / "regions.bim").unlink()
    with pytest.raises(GenomicsInputError, match=r"a PLINK 1 \.bed needs regions\.bim beside it"):
        genotype_format(bed)
    assert genotype_format("a.vcf.gz") == genotype_format("b.bcf") == "vcf"
    with pytest.raises(GenomicsInputError, match="not a genotype file name"):
        genotype_format(tmp_path / "cohort.txt")


def test_malformed_variant_lines_name_file_and_line(tmp_path):
    pvar = tmp_path / "g.pvar"
    pvar.write_text("##fileformat=PVARv1.0\n#CHROM\tPOS\tID\tREF\tALT\n1\t11\trs1\tA\tG\n1\televen\trs2\tC\tT\n")
    with pytest.raises(GenomicsInputError, match=r"g\.pvar:4: POS must be a positive integer, got 'eleven'"):
        read_variant_table(pvar)
    pvar.write_text("#CHROM\tPOS\tID\tREF\n1\t11\trs1\tA\n")
    with pytest.raises(GenomicsInputError, match=r"g\.pvar:1: the header lacks column\(s\) \['ALT'\]"):
        read_variant_table(pvar)
    bim = tmp_path / "g.bim"
    bim.write_text("1 rs1 0 11 G A\n23 rs2 0 12 T C\n")  # whitespace-separated, PLINK 1 chromosome code 23 = X
    table, first = read_variant_table(bim)
    assert first == 1 and table["#CHROM"].tolist() == ["1", "X"] and table["REF"].tolist() == ["A", "C"]
    bim.write_text("1 rs1 11 G\n")
    with pytest.raises(GenomicsInputError, match=r"g\.bim:1: 4 columns"):
        read_variant_table(bim)


@needs_plink2
def test_zstd_compressed_pvar_reads_as_the_plain_one(genotype_sets, tmp_path):
    plain, zst = genotype_sets["pgen"], genotype_sets["pgen_zst"]
    assert not zst.with_suffix(".pvar").exists() and zst.with_suffix(".pvar.zst").is_file()
    with open_genotypes(zst) as z, open_genotypes(plain) as p:
        assert z.variants_file.name == "g2z.pvar.zst" and z.samples == p.samples
        assert [v for _, v in z.variants(REGIONS)] == [v for _, v in p.variants(REGIONS)]  # lines included
    table, first = read_variant_table(zst.with_suffix(".pvar.zst"))
    expected, expected_first = read_variant_table(plain.with_suffix(".pvar"))
    assert first == expected_first and table.equals(expected)
    bad = tmp_path / "bad.pvar.zst"
    bad.write_bytes(b"not zstd at all")
    with pytest.raises(GenomicsInputError, match=r"bad\.pvar\.zst: not a readable zstd stream"):
        read_variant_table(bad)
