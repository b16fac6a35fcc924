"""genomics.dosage / GenotypeDosages / DosageEncoder: ALT dosages equal a direct count of the VCF's genotypes."""

import numpy as np
import pysam
import pytest
import torch

from genomics.dosage import read_dosages
from genomics.models import DosageEncoder
from genomics.regions import Region
from genomics.transforms import GenotypeDosages

VCF = """##fileformat=VCFv4.2
##contig=<ID=chr1,length=1000>
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ta\tb\tc\td
chr1\t11\trs1\tA\tG\t.\t.\t.\tGT\t0|0\t0|1\t1|1\t./.
chr1\t21\t.\tC\tT,G\t.\t.\t.\tGT\t1|2\t2|2\t0/1\t.|1
chr1\t31\t.\tG\tGA\t.\t.\t.\tGT\t1\t0\t1|0\t0|0
chr1\t41\t.\tT\tC\t.\t.\t.\tGT\t1|1\t1|1\t1|1\t1|1
chr1\t200\t.\tA\tC\t.\t.\t.\tGT\t1|1\t1|1\t1|1\t1|1
"""


@pytest.fixture
def vcf(tmp_path):
    plain = tmp_path / "g.vcf"
    plain.write_text(VCF)
    pysam.tabix_index(str(plain), preset="vcf", force=True)
    return str(plain) + ".gz"


def test_dosages_count_alt_copies_split_per_alt(vcf):
    regions = [Region("chr1", 0, 50, "r1"), Region("chr1", 5, 35, "overlap")]  # the overlap's sites count once
    table = read_dosages(vcf, regions)
    assert [s.name for s in table.sites] == ["chr1:11:A:G", "chr1:21:C:T", "chr1:21:C:G", "chr1:31:G:GA", "chr1:41:T:C"]
    expected = np.array(
        [[0, 1, 2, np.nan], [1, 0, 1, np.nan], [1, 2, 0, np.nan], [1, 0, 1, 0], [2, 2, 2, 2]], dtype=np.float32
    )  # haploid '1' -> 1, half-missing '.|1' -> missing
    np.testing.assert_array_equal(table.dosages, expected)
    assert table.sites[0].id == "rs1" and table.samples == ["a", "b", "c", "d"]


def test_transform_and_encoder_use_training_statistics_only(vcf):
    regions = [Region("chr1", 0, 50, "r1")]
    tf = GenotypeDosages(vcf, regions, train_subjects=["a", "b", "c"])
    x = tf("d")
    assert x.shape == (5,) and torch.isnan(x[:3]).all()
    inputs = tf.encoder_inputs()
    assert inputs["n_sites"] == 5
    torch.testing.assert_close(inputs["train_means"], torch.tensor([1.0, 2 / 3, 1.0, 2 / 3, 2.0]))
    enc = DosageEncoder(**inputs)
    z = enc(torch.stack([tf("a"), tf("d")]))  # (B, S)
    assert enc.output_dim == 5 and z.shape == (2, 5)
    torch.testing.assert_close(z[1], torch.tensor([1.0, 2 / 3, 1.0, 0.0, 2.0]))  # d's missing calls -> training means
    maf = DosageEncoder(**inputs, min_maf=0.2)  # drops the monomorphic (ALT frequency 1.0) site
    assert maf.output_dim == 4 and maf(torch.stack([tf("a")])).shape == (1, 4)
    with pytest.raises(KeyError, match="'zz'"):
        tf("zz")
