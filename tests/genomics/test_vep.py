"""VEP embeddings (genomics.variant_embedding, python -m genomics.vep): rows against direct model calls, one row per
ALT, the embedding cache on a rerun, the CLI end to end and its argument errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pysam
import pytest
import torch

from genomics.alphabet import PAD_ID, encode, reverse_complement
from genomics.caduceus import Caduceus, CaduceusConfig
from genomics.checkpoints import sha256_file
from genomics.variant_embedding import VariantInputError, embed_variants, window_bounds
from genomics.vep import main

REPO = Path(__file__).resolve().parents[2]
TINY = dict(d_model=8, n_layer=2, ssm_backend="torch")
SEQ_LEN, WINDOW = 64, 16


def make_genome(tmp: Path) -> tuple[Path, dict[str, str]]:
    rng = np.random.default_rng(0)
    contigs = {"chr1": "".join(rng.choice(list("ACGT"), 300)), "chr2": "".join(rng.choice(list("ACGT"), 100))}
    contigs["chr1"] = contigs["chr1"][:120] + "NNNNN" + contigs["chr1"][125:]  # an N run inside a window
    path = tmp / "ref.fa"
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in contigs.items()))
    return path, contigs


def default_records(contigs: dict[str, str]) -> list[tuple]:
    c1, c2 = contigs["chr1"], contigs["chr2"]
    other = lambda b: "A" if b != "A" else "C"  # noqa: E731
    return [
        ("chr1", 10, "rs1", c1[9], f"{other(c1[9])},G" if c1[9] != "G" else f"{other(c1[9])},T"),  # 2 ALTs, near start
        ("chr1", 130, ".", c1[129:131], c1[129]),  # deletion next to the N run
        ("chr1", 200, "rs3", c1[199], c1[199] + "AC,<DEL>"),  # insertion + a symbolic ALT (skipped)
        ("chr2", 95, "rs4", c2[94], other(c2[94])),  # near the contig end
    ]


def make_vcf(tmp: Path, contigs: dict[str, str], records=None) -> Path:
    records = records or default_records(contigs)
    lines = ["##fileformat=VCFv4.2", *(f"##contig=<ID={n},length={len(s)}>" for n, s in contigs.items()),
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]  # fmt: skip
    lines += [f"{c}\t{p}\t{i}\t{r}\t{a}\t.\tPASS\t." for c, p, i, r, a in records]
    plain = tmp / "variants.vcf"
    plain.write_text("\n".join(lines) + "\n")
    pysam.tabix_compress(str(plain), str(tmp / "variants.vcf.gz"), force=True)
    return tmp / "variants.vcf.gz"


def make_checkpoint(tmp: Path, rcps: bool, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = Caduceus(CaduceusConfig(rcps=rcps, **TINY))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)  # move off the init so strands and layers differ
    folder = tmp / f"ckpt_{'ps' if rcps else 'ph'}"
    model.save_pretrained(folder)
    return folder


def windows(contigs, chrom, pos, ref, alt, seq_len=SEQ_LEN):
    """The ref / alt sequences written out independently: allele start at seq_len // 2, N beyond the contig."""
    padded = "N" * seq_len + contigs[chrom] + "N" * seq_len
    p, half = pos - 1 + seq_len, seq_len // 2
    ref_seq = padded[p - half : p - half + seq_len]
    alt_seq = (padded[p - half : p] + alt + padded[p + len(ref) :])[:seq_len]
    return ref_seq, alt_seq


def direct(model: Caduceus, seq: str, window=WINDOW) -> torch.Tensor:
    """Model outputs of both strands, in forward position order, averaged over the window's non-pad tokens."""
    ids = torch.from_numpy(encode(seq))[None]
    rc_ids = torch.from_numpy(encode(reverse_complement(seq)))[None]
    with torch.no_grad():
        h = model(ids).last_hidden_state[0]  # (L, D) Ph | (L, 2D) PS
        if model.config.rcps:
            d = h.shape[-1] // 2
            fwd, rc = h[:, :d], h[:, d:].flip(-1)  # the RC half, channel order restored, is in forward order
            assert torch.allclose(rc, model(rc_ids).last_hidden_state[0, :, :d].flip(0), atol=1e-5)
        else:
            fwd, rc = h, model(rc_ids).last_hidden_state[0].flip(0)
    c = len(seq) // 2
    keep = [i for i in range(c - window // 2, c + window // 2 + 1) if 0 <= i < len(seq) and ids[0, i] != PAD_ID]
    return (fwd[keep].mean(0) + rc[keep].mean(0)) / 2


@pytest.fixture
def inputs(tmp_path):
    fasta, contigs = make_genome(tmp_path)
    return fasta, make_vcf(tmp_path, contigs), contigs


@pytest.mark.parametrize("rcps", [True, False], ids=["ps", "ph"])
def test_rows_equal_direct_model_calls_one_row_per_alt(tmp_path, inputs, rcps):
    fasta, vcf, contigs = inputs
    ckpt = make_checkpoint(tmp_path, rcps)
    record = embed_variants(vcf, fasta, ckpt, tmp_path / "out", window=WINDOW, seq_len=SEQ_LEN, chunk_size=3,
                            block=2, ssm_backend="torch", progress=False)  # fmt: skip
    table = pq.read_table(tmp_path / "out" / "vep.parquet")
    assert table.schema.field("ref_embedding").type == pa.list_(pa.float32(), 8)
    assert table.schema.field("concat_embedding").type == pa.list_(pa.float32(), 16)
    rows = table.to_pylist()
    expected = [(c, p, None if i == "." else i, r, a) for c, p, i, r, alts in default_records(contigs)
                for a in alts.split(",") if a != "<DEL>"]  # fmt: skip
    assert [(r["chrom"], r["pos"], r["id"], r["ref"], r["alt"]) for r in rows] == expected  # one row per ALT
    assert record["counts"]["sites"] == 4 and record["counts"]["rows"] == 5
    assert record["counts"]["skipped_symbolic"] == 1
    assert record["counts"]["embedded"] == 9  # 5 alt + 4 distinct ref windows (rs1's ref window is shared)
    model = Caduceus.from_pretrained(ckpt, ssm_backend="torch")
    for r in rows:
        ref_seq, alt_seq = windows(contigs, r["chrom"], r["pos"], r["ref"], r["alt"])
        ref_e, alt_e = direct(model, ref_seq), direct(model, alt_seq)
        torch.testing.assert_close(torch.tensor(r["ref_embedding"]), ref_e, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(torch.tensor(r["alt_embedding"]), alt_e, atol=1e-5, rtol=1e-4)
        assert r["concat_embedding"] == r["ref_embedding"] + r["alt_embedding"]
        assert not torch.allclose(ref_e, alt_e)


def test_a_second_run_makes_no_model_call(tmp_path, inputs, monkeypatch):
    fasta, vcf, _ = inputs
    ckpt = make_checkpoint(tmp_path, rcps=True)
    calls = []
    forward = Caduceus.forward

    def counted(self, *args, **kwargs):
        calls.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Caduceus, "forward", counted)
    kw = dict(window=WINDOW, seq_len=SEQ_LEN, cache=tmp_path / "cache", ssm_backend="torch", progress=False)
    first = embed_variants(vcf, fasta, ckpt, tmp_path / "a", **kw)
    n_first = len(calls)
    second = embed_variants(vcf, fasta, ckpt, tmp_path / "b", **kw)
    assert n_first > 0 and len(calls) == n_first  # no model call the second time
    assert second["counts"]["embedded"] == 0 and second["counts"]["cached"] == first["counts"]["embedded"] == 9
    a, b = (pq.read_table(tmp_path / d / "vep.parquet").to_pylist() for d in "ab")
    assert a == b
    other = embed_variants(vcf, fasta, ckpt, tmp_path / "c", **(kw | {"window": 8}))  # pooling changes the identity
    assert other["counts"]["embedded"] == 9 and other["model_identity"] != first["model_identity"]


def test_ref_mismatch_and_unknown_contig_raise(tmp_path):
    fasta, contigs = make_genome(tmp_path)
    ckpt = make_checkpoint(tmp_path, rcps=True)
    wrong = "A" if contigs["chr1"][9] != "A" else "C"
    vcf = make_vcf(tmp_path, contigs, [("chr1", 10, ".", wrong, "G" if wrong != "G" else "T")])
    with pytest.raises(VariantInputError, match="chr1:10: REF"):
        embed_variants(vcf, fasta, ckpt, tmp_path / "out", seq_len=SEQ_LEN, ssm_backend="torch", progress=False)
    vcf = make_vcf(tmp_path, contigs, [("chr2", 101, ".", "A", "G")])  # chr2 has 100 bases
    with pytest.raises(VariantInputError, match="past chr2's end"):
        embed_variants(vcf, fasta, ckpt, tmp_path / "out", seq_len=SEQ_LEN, ssm_backend="torch", progress=False)
    vcf = make_vcf(tmp_path, contigs, [("chr9", 10, ".", "A", "G")])
    with pytest.raises(VariantInputError, match="chr9"):
        embed_variants(vcf, fasta, ckpt, tmp_path / "out", seq_len=SEQ_LEN, ssm_backend="torch", progress=False)
    assert not (tmp_path / "out" / "vep.parquet").exists() and not list((tmp_path / "out").glob(".*.tmp"))


def test_window_bounds_follow_the_recipe():
    assert window_bounds(4096, 1536) == (2048 - 768, 2048 + 769)  # 1,537 tokens centred on index 2048
    assert window_bounds(131072, 1536) == (65536 - 768, 65536 + 769)
    assert window_bounds(64, 1536) == (0, 64)  # clipped to the sequence


def test_cli_end_to_end(tmp_path, inputs):
    fasta, vcf, _ = inputs
    ckpt = make_checkpoint(tmp_path, rcps=False)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "genomics.vep", f"vcf={vcf}", f"reference={fasta}", f"checkpoint={ckpt}",
           f"out={out}", f"window={WINDOW}", f"seq_len={SEQ_LEN}", "ssm_backend=torch", "progress=false"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "5 ALT rows from 4 sites" in proc.stdout
    table = pq.read_table(out / "vep.parquet")
    assert table.num_rows == 5 and table.column_names[:5] == ["chrom", "pos", "id", "ref", "alt"]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["inputs"]["checkpoint_sha256"]["model.safetensors"] == sha256_file(ckpt / "model.safetensors")
    assert prov["inputs"]["vcf_sha256"] == sha256_file(vcf) and prov["output"]["vep.parquet"] == sha256_file(
        out / "vep.parquet"
    )
    assert prov["settings"]["window"] == WINDOW and prov["model_identity"] == prov["model_identity"].lower()
    assert prov["settings"]["seq_len"] == SEQ_LEN and prov["settings"]["rcps"] is False
    assert not list(out.glob(".*.tmp"))
    bad = subprocess.run([*cmd[:7], "window=wide"], env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "window must be a positive integer" in bad.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        ([], "missing required argument(s): vcf=..., reference=..., checkpoint=..., out=..."),
        (["vcf"], "arguments are key=value"),
        (["colour=red"], "unknown argument 'colour'"),
        (["vcf=a", "vcf=b"], "vcf given twice"),
        (["seq_len=0"], "seq_len must be a positive integer"),
        (["vcf=/no/such.vcf.gz"], "vcf=/no/such.vcf.gz: no such file"),
        (["checkpoint=."], "not a local model folder"),
        (["device=tpu"], "device must be cpu"),
        (["progress=maybe"], "progress must be true or false"),
    ],
)
def test_cli_bad_arguments_exit_2_with_a_message(tmp_path, inputs, capsys, args, message):
    fasta, vcf, _ = inputs
    ckpt = make_checkpoint(tmp_path, rcps=True)
    base = (
        {"vcf": str(vcf), "reference": str(fasta), "checkpoint": str(ckpt), "out": str(tmp_path / "o")} if args else {}
    )
    given = {a.partition("=")[0] for a in args}
    argv = [f"{k}={v}" for k, v in base.items() if k not in given] + args
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "usage: python -m genomics.vep" in err
