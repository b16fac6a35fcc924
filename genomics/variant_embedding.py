"""Variant-effect (VEP) embeddings of a Caduceus model: windowed ref / alt embeddings of every ALT of a VCF.

    alleles, skipped = read_alleles("variants.vcf.gz")               # one Allele per ALT of every site
    record = embed_variants("variants.vcf.gz", "ref.fa", "ckpt/", "out/", window=1536, seq_len=4096)
    # out/vep.parquet: chrom, pos, id, ref, alt, ref_embedding [D], alt_embedding [D], concat_embedding [2D]
    # out/provenance.json: inputs (with SHA-256), settings, model identity, counts, output SHA-256

Recipe: kuleshov-group/caduceus `vep_embeddings.py` (Schiff et al. 2024, Sec. 5.3, the LRB variant-effect task), read
for its facts. What we follow, and where we differ:
- Centring: upstream's sequences have the variant at token index seq_len // 2 (its `find_variant_idx` first guess).
  We cut the reference window [p - seq_len // 2, p - seq_len // 2 + seq_len) around the variant's first REF base p
  (0-based), padding with N beyond the contig ends; the alt sequence keeps the same left flank, then ALT, then the
  reference after REF, cut to seq_len (so SNVs differ at one index, and an indel's allele also starts at seq_len // 2;
  upstream's benchmark has SNVs only).
- Strands: as upstream, both strands of ref and alt. PS: one pass; the RC half of the RCPS stream is the RC strand.
  Ph: a second pass on the reverse complement (upstream tokenises the reversed-complemented string; the same ids).
  Each RC strand is put back into forward position order before windowing (upstream flips the Ph RC output along
  length; for PS it flips length and channels, which leaves the RC strand in RC order, so its window sits one base
  off the forward one; we do not reproduce that shift), so both strands average the same bases.
- Averaging: upstream's token offsets `range(-window // 2, window // 2 + 1)` around the variant (1,537 tokens for the
  default window of 1,536 bp; `window` counts bp = tokens, one base a token), then a plain mean. We take the same
  offsets, clipped to the sequence (upstream clamps indices, repeating edge tokens), and average over non-[PAD]
  tokens only (N and beyond-contig padding under the N -> [PAD] policy of genomics.alphabet; upstream filtered out
  sequences with >= 0.5% N and averaged all tokens).
- Output: upstream dumps `concat_avg_ws` = [ref, alt] per strand (forward, and `rc_` for the RC strand). We store the
  strand average (RC-invariant): ref_embedding, alt_embedding (D each) and concat_embedding = [ref, alt] (2D).
Symbolic ALTs (<DEL>, *, breakends, '.') have no sequence and are skipped (counted in the provenance). A REF that
disagrees with the FASTA raises VariantInputError. Contigs: the VCF's name, else the same name with / without 'chr'.

Each ref / alt window is embedded once per model identity through genomics.embedding_cache (sequence key = the
window's token ids; the identity covers weights, config and the pooling settings above), so a rerun, or the REF window
shared by the ALTs of a multi-allelic site, costs no model pass.
"""

from __future__ import annotations

import json
import os
import platform
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from genomics.alphabet import PAD_ID, encode
from genomics.caduceus.embedding import CaduceusEmbedder, masked_mean
from genomics.checkpoints import sha256_file
from genomics.consensus import is_symbolic
from genomics.embedding_cache import EmbeddingCache, model_identity

RECIPE = "caduceus-vep/1"  # bump when the pooling below changes: it is part of the cache's model identity
WINDOW_BP, SEQ_LEN = 1536, 4096


class VariantInputError(ValueError):
    """A VCF record that the reference FASTA cannot serve (REF mismatch, unknown contig)."""


@dataclass(frozen=True)
class Allele:
    """One ALT of a VCF site; pos is the VCF POS (1-based), id None for '.'."""

    chrom: str
    pos: int
    id: str | None
    ref: str
    alt: str


def read_alleles(vcf: str | Path) -> tuple[list[Allele], dict[str, int]]:
    """Every non-symbolic ALT of every record, in file order; counts of sites, rows and skipped symbolic ALTs."""
    import pysam

    alleles, counts = [], {"sites": 0, "alleles": 0, "skipped_symbolic": 0, "skipped_no_alt": 0}
    with pysam.VariantFile(str(vcf)) as vf:
        for rec in vf.fetch():
            counts["sites"] += 1
            if not rec.alts:
                counts["skipped_no_alt"] += 1
                continue
            for alt in rec.alts:
                if is_symbolic(alt) or is_symbolic(rec.ref):
                    counts["skipped_symbolic"] += 1
                    continue
                alleles.append(Allele(rec.chrom, int(rec.pos), rec.id, rec.ref.upper(), alt.upper()))
    counts["alleles"] = len(alleles)
    return alleles, counts


class Reference:
    """A reference FASTA (pysam, indexed on first use) serving fixed-length windows padded with N past contig ends."""

    def __init__(self, path: str | Path):
        import pysam

        self.path = Path(path)
        self.fasta = pysam.FastaFile(str(path))
        self.lengths = dict(zip(self.fasta.references, self.fasta.lengths))

    def contig(self, name: str) -> str:
        for candidate in (name, name.removeprefix("chr"), "chr" + name):
            if candidate in self.lengths:
                return candidate
        raise VariantInputError(f"contig {name!r} is not in {self.path} (contigs: {', '.join(list(self.lengths)[:8])})")

    def window(self, contig: str, start: int, length: int) -> str:
        """Bases [start, start + length) of contig (0-based), upper-cased; N outside the contig."""
        n = self.lengths[contig]
        lo, hi = max(start, 0), min(start + length, n)
        if hi <= lo:
            return "N" * length
        return "N" * (lo - start) + self.fasta.fetch(contig, lo, hi).upper() + "N" * (start + length - hi)

    def close(self) -> None:
        self.fasta.close()


def allele_sequences(reference: Reference, allele: Allele, seq_len: int) -> tuple[str, str]:
    """(ref, alt) sequences of seq_len bases with the allele's first base at index seq_len // 2 (see module doc)."""
    contig = reference.contig(allele.chrom)
    p, half = allele.pos - 1, seq_len // 2
    if p < 0 or p + len(allele.ref) > reference.lengths[contig]:
        raise VariantInputError(f"{allele.chrom}:{allele.pos}: REF {allele.ref} reaches past {contig}'s end")
    start = p - half
    ref_seq = reference.window(contig, start, seq_len + len(allele.ref))  # long enough for any REF
    found = ref_seq[half : half + len(allele.ref)]
    if any(a != b and a != "N" for a, b in zip(found, allele.ref)) or len(found) != len(allele.ref):
        raise VariantInputError(
            f"{allele.chrom}:{allele.pos}: REF {allele.ref} but {reference.path} has {found or '(nothing)'} there"
        )
    alt_seq = ref_seq[:half] + allele.alt + reference.window(contig, p + len(allele.ref), seq_len)
    return ref_seq[:seq_len], alt_seq[:seq_len]


def window_bounds(seq_len: int, window: int) -> tuple[int, int]:
    """[lo, hi) token positions averaged: offsets range(-window // 2, window // 2 + 1) around seq_len // 2, clipped."""
    centre = seq_len // 2
    return max(0, centre + (-window) // 2), min(seq_len, centre + window // 2 + 1)


def window_pool(h: Tensor, ids: Tensor, window: int) -> Tensor:
    """h (N, L, D, 2) (strand 1 in RC order, genomics.caduceus.embedding) -> (N, D): each strand's mean over the
    non-[PAD] tokens of the variant window (in forward position order), averaged over the two strands."""
    lo, hi = window_bounds(ids.shape[1], window)
    mask = ids[:, lo:hi] != PAD_ID  # (N, W); the RC strand in forward order has the same pads
    fwd = masked_mean(h[:, lo:hi, :, 0], mask)  # (N, D)
    rc = masked_mean(h[..., 1].flip(1)[:, lo:hi], mask)  # (N, D)
    return (fwd + rc) / 2


class VariantEmbedder(nn.Module):
    """ids (N, seq_len) -> (N, D) windowed, strand-averaged embeddings of a frozen Caduceus backbone."""

    def __init__(self, backbone: nn.Module, window: int = WINDOW_BP):
        super().__init__()
        self.embedder = CaduceusEmbedder(backbone, conjoin=not backbone.config.rcps).eval()
        self.window, self.dim = int(window), backbone.config.d_model
        self.identity = model_identity(backbone, recipe=RECIPE, window=self.window, strands="mean", pads="excluded")

    @torch.no_grad()
    def forward(self, ids: Tensor) -> Tensor:
        ids = ids.to(self.embedder.complement.device)  # the module's device (.to moves the buffer too)
        return window_pool(self.embedder(ids), ids, self.window).float()  # (N, D)


def _atomic_target(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"


def _commit(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def checkpoint_hashes(folder: str | Path) -> dict[str, str]:
    """SHA-256 of every file at the top of a checkpoint folder (config.json, model.safetensors, ...)."""
    return {
        p.name: sha256_file(p) for p in sorted(Path(folder).iterdir()) if p.is_file() and not p.name.startswith(".")
    }


def embed_variants(
    vcf: str | Path,
    reference: str | Path,
    checkpoint: str | Path,  # a local Caduceus folder (genomics.caduceus.Caduceus.from_pretrained)
    out: str | Path,
    window: int = WINDOW_BP,
    seq_len: int = SEQ_LEN,
    cache: str | Path | None = None,  # parent folder of the embedding caches; default out/embedding_cache
    chunk_size: int = 8,  # sequences per model pass
    block: int = 256,  # alleles whose windows are built and written at a time
    device: str = "cpu",
    ssm_backend: str | None = None,
    progress: bool = True,
) -> dict:
    """Write out/vep.parquet and out/provenance.json (atomically); returns the provenance record."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from genomics.caduceus import Caduceus

    t0, out = time.time(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    backbone = Caduceus.from_pretrained(str(checkpoint), **({"ssm_backend": ssm_backend} if ssm_backend else {}))
    embedder = VariantEmbedder(backbone, window).to(device)
    d = embedder.dim
    store = EmbeddingCache.under(cache if cache is not None else out / "embedding_cache", embedder.identity, d)
    alleles, counts = read_alleles(vcf)
    ref_genome = Reference(reference)
    vec = lambda n: pa.list_(pa.float32(), n)  # noqa: E731
    schema = pa.schema(
        [
            ("chrom", pa.string()),
            ("pos", pa.int64()),
            ("id", pa.string()),
            ("ref", pa.string()),
            ("alt", pa.string()),
            ("ref_embedding", vec(d)),
            ("alt_embedding", vec(d)),
            ("concat_embedding", vec(2 * d)),
        ]
    )
    stats = {"unique_sequences": 0, "cached": 0, "embedded": 0}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=2 * len(alleles), desc="VEP ref/alt windows", unit="seq")
    path, tmp = out / "vep.parquet", _atomic_target(out / "vep.parquet")
    try:
        with pq.ParquetWriter(str(tmp), schema) as writer:
            for b in range(0, max(len(alleles), 1), block):
                part = alleles[b : b + block]
                seqs = [allele_sequences(ref_genome, a, seq_len) for a in part]
                rows = [encode(r) for r, _ in seqs] + [encode(a) for _, a in seqs]  # refs, then alts
                ids = torch.from_numpy(np.stack(rows) if rows else np.zeros((0, seq_len), dtype=np.int64))
                emb = store.embed(ids, embedder, chunk_size=chunk_size, progress=bar if bar is not None else False)
                for k in ("unique", "cached", "embedded"):
                    stats["unique_sequences" if k == "unique" else k] += store.stats[k]
                ref_e, alt_e = emb[: len(part)].numpy(), emb[len(part) :].numpy()
                writer.write_table(_table(part, ref_e, alt_e, schema, d))
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        ref_genome.close()
        if bar is not None:
            bar.close()
    record = {
        "recipe": RECIPE,
        "inputs": {
            "vcf": str(Path(vcf).resolve()),
            "vcf_sha256": sha256_file(vcf),
            "reference": str(Path(reference).resolve()),
            "reference_sha256": sha256_file(reference),
            "checkpoint": str(Path(checkpoint).resolve()),
            "checkpoint_sha256": checkpoint_hashes(checkpoint),
        },
        "settings": {
            "window": window,
            "seq_len": seq_len,
            "centre_index": seq_len // 2,
            "window_tokens": list(window_bounds(seq_len, window)),
            "strands": "mean",
            "pads": "excluded",
            "n_as": "PAD",
            "rcps": bool(backbone.config.rcps),
            "d_model": d,
            "chunk_size": chunk_size,
            "device": device,
            "ssm_backend": ssm_backend,
        },
        "model_identity": embedder.identity,
        "cache": str(store.root.resolve()),
        "counts": counts | stats | {"rows": len(alleles)},
        "output": {"vep.parquet": sha256_file(path)},
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "seconds": round(time.time() - t0, 3),
    }
    tmp = _atomic_target(out / "provenance.json")
    try:
        tmp.write_text(json.dumps(record, indent=1))
        _commit(tmp, out / "provenance.json")
    finally:
        tmp.unlink(missing_ok=True)
    return record


def _table(part: Sequence[Allele], ref_e: np.ndarray, alt_e: np.ndarray, schema, d: int):
    import pyarrow as pa

    def vectors(x: np.ndarray, n: int):
        return pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).reshape(-1), pa.float32()), n)

    concat = np.concatenate([ref_e, alt_e], axis=1) if len(part) else np.zeros((0, 2 * d), np.float32)
    columns = [
        pa.array([a.chrom for a in part], pa.string()),
        pa.array([a.pos for a in part], pa.int64()),
        pa.array([a.id for a in part], pa.string()),
        pa.array([a.ref for a in part], pa.string()),
        pa.array([a.alt for a in part], pa.string()),
        vectors(ref_e.reshape(-1, d), d),
        vectors(alt_e.reshape(-1, d), d),
        vectors(concat, 2 * d),
    ]
    return pa.Table.from_arrays(columns, schema=schema)
