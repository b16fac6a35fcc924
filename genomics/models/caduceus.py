"""CaduceusGenomicsEncoder: one vector per subject from the Caduceus embeddings of its regions and haplotypes.

References: fusion/encoders.py (the encoder interface); genomics/models/kmer.py (the baseline this replaces, same
input); genomics/caduceus/embedding.py (strand layout and pooling).

Input: ids (B, R, H, L), R regions x H haplotypes (2) x L token ids, left-padded with [PAD]. Pooling rule:
  1. sequence -> (D,): strand-invariant mean over non-[PAD] tokens (both strands, then their average), so a region
     read off either strand gives the same vector (PS: RCPS stacking; Ph: forward and RC passes, "conjoined");
  2. haplotypes -> mean: a diploid genotype is an unordered pair, so the vector is invariant to phase/haplotype order
     and additive in the haplotypes, like an allele dosage (the k-mer baseline also sums its haplotypes);
  3. regions -> concat (default, (B, R*D)): each region is a distinct locus, keep its identity (a per-locus design
     matrix; R fixed by the data config) | mean ((B, D), for a varying or very large set of regions).
Identical sequences in a batch (shared reference haplotypes, homozygous regions) are embedded once (`dedup`), and
sequences go through the model `chunk_size` at a time to bound activation memory. With `freeze=True` (default) the
encoder follows the one freeze rule (genomics.freeze: eval mode, no gradients, no autograd graph), and sequence
embeddings are memoised in memory by content (blake2b of the ids; up to `cache_size` sequences, cleared when weights
are loaded), so later epochs cost no backbone passes.
Otherwise the backbone is fine-tuned, optionally with gradient checkpointing.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from genomics.caduceus.config import CaduceusConfig
from genomics.caduceus.embedding import CaduceusEmbedder, CaduceusProjector, pool_strands
from genomics.caduceus.modeling import Caduceus
from genomics.freeze import Freezable


class CaduceusGenomicsEncoder(Freezable):
    """(B, R, H, L) token ids -> (B, output_dim) subject embedding; see module docstring for the pooling rule."""

    def __init__(
        self,
        n_regions: int,  # R, regions per subject (fixed by the data config)
        checkpoint: str | None = None,  # local folder in the published layout (MaskedLM or backbone); wins if given
        config: dict | None = None,  # else: CaduceusConfig kwargs of a randomly initialised model
        region_pool: str = "concat",  # "concat" -> R * D | "mean" -> D
        freeze: bool = True,  # frozen encoder (genomics.freeze: eval mode, no grad), projector included
        chunk_size: int = 16,  # sequences per forward pass
        dedup: bool = True,  # embed identical sequences once
        cache_size: int = 1_000_000,  # frozen only: sequences whose embedding is memoised (0 = no cache)
        gradient_checkpointing: bool = False,  # only matters when not frozen
        projector: bool = False,  # append a CaduceusProjector (output_dim 512)
        ssm_backend: str | None = None,  # force "torch" | "cpu" | "cuda"; None keeps the config's ("auto")
    ):
        super().__init__()
        if region_pool not in ("concat", "mean"):
            raise ValueError(f"region_pool must be 'concat' or 'mean', got {region_pool!r}")
        if checkpoint is None and config is None:
            raise ValueError("give a checkpoint folder (e.g. from experiment=pretrain_caduceus) or a config")
        backbone = Caduceus.from_pretrained(checkpoint) if checkpoint else Caduceus(CaduceusConfig(**dict(config)))
        if ssm_backend is not None:
            backbone.set_ssm_backend(ssm_backend)
        if gradient_checkpointing:
            backbone.backbone.gradient_checkpointing = True
        self.embedder = CaduceusEmbedder(backbone, conjoin=not backbone.config.rcps)
        self.n_regions, self.region_pool = n_regions, region_pool
        self.chunk_size, self.dedup, self.cache_size = chunk_size, dedup, cache_size
        self._cache: dict[bytes, Tensor] = {}  # blake2b(ids) -> (D,) float32 on CPU
        self.register_load_state_dict_post_hook(lambda module, keys: module._cache.clear())
        d = backbone.config.d_model
        pooled_dim = n_regions * d if region_pool == "concat" else d
        self.projector = CaduceusProjector(pooled_dim) if projector else None
        self.output_dim = self.projector.output_dim if projector else pooled_dim
        self.set_freeze(freeze)  # last: the projector too

    def embed_sequences(self, ids: Tensor) -> Tensor:
        """(N, L) ids -> (N, D) strand-invariant sequence embeddings; memoised when frozen."""
        if not (self.freeze and self.cache_size > 0):
            return self._embed(ids)
        keys = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in ids.cpu().numpy()]
        todo = {k: i for i, k in enumerate(keys) if k not in self._cache}  # first row of each missing sequence
        fresh = dict(zip(todo, self._embed(ids[list(todo.values())]).float().cpu())) if todo else {}  # (D,) each
        if len(self._cache) + len(fresh) <= self.cache_size:  # a full cache serves, and stores nothing new
            self._cache.update(fresh)
        return torch.stack([fresh[k] if k in fresh else self._cache[k] for k in keys]).to(ids.device)  # (N, D)

    def _embed(self, ids: Tensor) -> Tensor:
        """(N, L) ids -> (N, D), chunk_size sequences per forward pass."""
        inverse = None
        if self.dedup:
            ids, inverse = torch.unique(ids, dim=0, return_inverse=True)  # (U, L), (N,)
        with self.no_grad_if_frozen():
            out = torch.cat([pool_strands(self.embedder(c), c) for c in ids.split(self.chunk_size)], dim=0)  # (U, D)
        return out if inverse is None else out[inverse]  # (N, D)

    def forward(self, ids: Tensor) -> Tensor:
        b, r, h, length = ids.shape
        if r != self.n_regions:
            raise ValueError(f"CaduceusGenomicsEncoder was built for {self.n_regions} regions, got {r}")
        seq = self.embed_sequences(ids.reshape(b * r * h, length))  # (B*R*H, D)
        subj = seq.reshape(b, r, h, -1).mean(2)  # (B, R, D), haplotypes averaged
        pooled = subj.flatten(1) if self.region_pool == "concat" else subj.mean(1)  # (B, R*D) | (B, D)
        return pooled if self.projector is None else self.projector(pooled)  # (B, output_dim)
