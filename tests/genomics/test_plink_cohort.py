"""The demo cohort's VCF converted by Debian's `plink2` (.pgen, also with a zstd-compressed .pvar.zst as `--make-pgen
vzs` writes it; .bed after `bcftools norm -m-`): the same dosages,
the dosage baseline trains from data.genotypes=<.pgen>, and fusion.validate names the PLINK file for a sample
without a manifest row, a subject without genotypes, and REF/ALT swapped in a .bim."""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fusion.app.cohort_source import resolve_cohort
from fusion.train import train
from fusion.validate import main as validate
from genomics.dosage import read_dosages
from genomics.regions import read_bed

pytestmark = pytest.mark.skipif(
    (shutil.which("plink2") is None or shutil.which("bcftools") is None) and not os.environ.get("CI"),
    reason="plink2/bcftools not installed (apt-get install plink2 bcftools); required when CI is set",
)
KEYS = ("manifest", "vcf", "reference", "regions", "atlas", "atlas_coords")


def sh(*args) -> None:
    subprocess.run([str(a) for a in args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def plink_demo(tmp_path_factory, demo_cache, train_config) -> dict:
    """The tiny demo cohort's files (data.*) and its VCF as .pgen (plain and vzs) and .bed (kb/cohort-format.md's
    commands)."""
    d = tmp_path_factory.mktemp("plink_demo")
    cfg = train_config(d, demo_cache, [])
    resolve_cohort(cfg)
    files = {k: Path(cfg.data[k]) for k in KEYS}
    sh("plink2", "--vcf", files["vcf"], "--make-pgen", "--out", d / "demo")
    sh("plink2", "--vcf", files["vcf"], "--make-pgen", "vzs", "--out", d / "demo_zst")
    sh("bcftools", "norm", "-m-", files["vcf"], "-Oz", "-o", d / "split.vcf.gz")
    sh("plink2", "--vcf", d / "split.vcf.gz", "--make-bed", "--out", d / "demo1")
    return {"files": files, "pgen": d / "demo.pgen", "pgen_zst": d / "demo_zst.pgen", "bed": d / "demo1.bed"}


def test_demo_dosages_from_pgen_and_bed_equal_the_vcf(plink_demo):
    regions = read_bed(plink_demo["files"]["regions"])
    vcf = read_dosages(plink_demo["files"]["vcf"], regions)
    assert vcf.dosages.shape[0] > len(regions) and any(len(s.ref) != len(s.alt) for s in vcf.sites)  # indels too
    assert len({s.pos for s in vcf.sites}) < len(vcf.sites)  # the demo has multi-allelic sites (split per ALT)
    assert plink_demo["pgen_zst"].with_suffix(".pvar.zst").is_file()
    assert not plink_demo["pgen_zst"].with_suffix(".pvar").exists()
    for fmt in ("pgen", "pgen_zst", "bed"):
        table = read_dosages(plink_demo[fmt], regions)
        assert table.samples == vcf.samples
        assert [(s.pos, s.ref, s.alt) for s in table.sites] == [(s.pos, s.ref, s.alt) for s in vcf.sites]
        np.testing.assert_array_equal(table.dosages, vcf.dosages)


def test_dosage_baseline_trains_from_pgen(plink_demo, tmp_path, demo_cache, train_config):
    overrides = ["genomics=dosage", f"data.genotypes={plink_demo['pgen']}", "+trainer.fast_dev_run=true"]
    cfg = train_config(tmp_path, demo_cache, overrides)
    metrics, objs = train(cfg)
    transform = objs["datamodule"].genomics_transform
    assert Path(transform.genotypes) == plink_demo["pgen"] and transform.table.dosages.shape[0] > 0
    assert np.isfinite(metrics["train/loss"]) and 0 <= metrics["test/g2b/R@1"] <= 1


def run_validate(files: dict, genotypes: Path, capsys) -> tuple[int, str]:
    rc = validate([f"data.{k}={v}" for k, v in files.items()] + [f"data.genotypes={genotypes}"])
    out = capsys.readouterr()
    return rc, out.out + out.err


def copy_set(src: Path, dst: Path, suffixes) -> Path:
    for s in suffixes:
        shutil.copy(src.with_suffix(s), dst.with_suffix(s))
    return dst


def test_validate_names_the_plink_file(plink_demo, tmp_path, capsys):
    files = plink_demo["files"]
    for fmt in ("pgen", "pgen_zst"):
        rc, text = run_validate(files, plink_demo[fmt], capsys)
        assert rc == 0 and "0 error(s)" in text, text
    pgen = copy_set(plink_demo["pgen"], tmp_path / "renamed.pgen", (".pgen", ".pvar", ".psam"))
    psam = pgen.with_suffix(".psam")
    psam.write_text(psam.read_text().replace("sub-0003\t", "sub-extra\t"))
    rc, text = run_validate(files, pgen, capsys)
    assert rc == 1, text
    assert f"[warning] {psam}: 1 sample(s) have no manifest row and are ignored, e.g. ['sub-extra']" in text
    assert f"subject 'sub-0003': not a sample of {psam}" in text and "sub-0003: not in genotypes" in text
    bed = copy_set(plink_demo["bed"], tmp_path / "swapped.bed", (".bed", ".bim", ".fam"))
    bim = bed.with_suffix(".bim")
    lines = [line.split("\t") for line in bim.read_text().splitlines()]
    bim.write_text("".join("\t".join([*f[:4], f[5], f[4]]) + "\n" for f in lines))  # PLINK 1.9-style A1 = REF
    rc, text = run_validate(files, bed, capsys)
    assert rc == 1 and f"{bim}:1: REF" in text and "REF and ALT look swapped" in text and "--ref-from-fa" in text
    assert "Traceback" not in text
    rc, text = run_validate({**files, "regions": plink_demo["bed"]}, plink_demo["pgen"], capsys)  # a mix-up
    assert rc == 1 and f"{plink_demo['bed']}: a PLINK 1 genotype .bed (binary), not a BED of regions" in text, text
