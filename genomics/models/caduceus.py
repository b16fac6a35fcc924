"""CaduceusGenomicsEncoder: one vector per subject from the Caduceus embeddings of its regions and haplotypes.

References: fusion/encoders.py (the encoder interface); genomics/models/kmer.py (the baseline this replaces, same
input); genomics/caduceus/embedding.py (strand layout and pooling); kuleshov-group/caduceus `vep_embeddings.py` (the
VEP recipe averages the token embeddings of a window around the variant); kb/caduceus.md, "Pooling".

Input: ids (B, R, H, L), R regions x H haplotypes (2) x L token ids, left-padded with [PAD]; or the dict of
genomics.transforms.PersonalSequenceTokens(sites=True): {"ids": (B, R, H, L), "sites": (B, R, H, S)} (token offset of
each VCF site of the region in each haplotype, -1 = none). Pooling rule (`pool`):
  1. sequence ->
     "mean"  (D,): strand-invariant mean over non-[PAD] tokens (both strands, then their average), so a region read
             off either strand gives the same vector (PS: RCPS stacking; Ph: forward and RC passes, "conjoined");
     "sites" (S, D): per VCF site, the mean over the non-[PAD] tokens within +-`window` of its offset of the
             strand-invariant token embedding (h_fwd[i] + h_rc[L-1-i]) / 2; a region read off the other strand, with
             its site offsets mapped to L-1-offset, gives the same vectors; an absent site (-1) gives zeros;
     "diff"  (S, D): "sites" of the haplotype minus "sites" of the region's reference sequence (`reference_ids`,
             `reference_sites`, from the transform's encoder_inputs()): zero where the haplotype's context equals
             the reference's, i.e. only what the subject's variants change;
  2. haplotypes -> mean: a diploid genotype is an unordered pair, so the vector is invariant to phase/haplotype order
     and additive in the haplotypes, like an allele dosage (the k-mer baseline also sums its haplotypes);
  2b. sites ("sites"/"diff") -> `site_pool`: "concat" ((S*D) per region: one feature block per site, like a
     dosage column) | "mean" ((D,) per region: the mean over the region's sites). With `site_norm` ("diff" only),
     each site's block is first divided by the largest norm it reaches in the training split (`fit`, floored at
     site_norm_floor x the median over sites), so each variant enters at the scale of its own effect while its
     allele frequency still sets its variance: a per-feature standardisation (the head's input_norm) would
     give rare variants the weight of common ones, so configs using it turn input_norm off;
  3. regions -> concat (default, (B, R*...)): each region is a distinct locus, keep its identity (a per-locus design
     matrix; R fixed by the data config) | mean (for a varying or very large set of regions).
Identical sequences in a batch (shared reference haplotypes, homozygous regions) are embedded once (`dedup`), and
sequences go through the model `chunk_size` at a time to bound activation memory. With `freeze=True` (default) the
encoder follows the one freeze rule (genomics.freeze: eval mode, no gradients, no autograd graph), and pooled sequence
embeddings are memoised in memory by content (blake2b of the ids, and of the site offsets for "sites"/"diff"; up to
`cache_size` sequences, cleared when weights are loaded), so later epochs cost no backbone passes; with `cache_dir`
they are also stored on disk (genomics.embedding_cache: content-addressed by sequence, in a folder per model identity
= weights + config + pooling settings), so a second run on the same cohort makes no backbone pass at all.
Otherwise the backbone is fine-tuned, optionally with gradient checkpointing (no cache).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch import Tensor
from torch.utils.data import default_collate

from genomics.alphabet import PAD_ID
from genomics.caduceus.config import CaduceusConfig
from genomics.caduceus.embedding import CaduceusEmbedder, CaduceusProjector, pool_strands
from genomics.caduceus.modeling import Caduceus
from genomics.freeze import Freezable

POOLS = ("mean", "sites", "diff")


def token_embeddings(h: Tensor) -> Tensor:
    """(N, L, D, 2) strand layout -> (N, L, D) strand-invariant per-token embeddings in forward order: the mean of the
    forward strand at i and the RC strand at L-1-i (the same base read off the other strand). (N, L, D) passes."""
    return h if h.ndim == 3 else (h[..., 0] + h[..., 1].flip(1)) / 2


def window_means(e: Tensor, ids: Tensor, sites: Tensor, window: int, pad_id: int = PAD_ID) -> Tensor:
    """Mean of e (N, L, D) over the non-pad tokens within +-window of each site offset sites (N, S) -> (N, S, D);
    a site offset < 0 (none) or a window of pads only gives zeros."""
    n, length, d = e.shape
    pos = sites.unsqueeze(-1) + torch.arange(-window, window + 1, device=e.device)  # (N, S, K)
    keep = (sites.unsqueeze(-1) >= 0) & (pos >= 0) & (pos < length)
    flat = pos.clamp(0, length - 1).flatten(1)  # (N, S*K)
    keep = keep & (ids.gather(1, flat) != pad_id).view_as(pos)  # (N, S, K)
    vals = e.gather(1, flat.unsqueeze(-1).expand(-1, -1, d)).view(*pos.shape, d)  # (N, S, K, D)
    w = keep.to(e.dtype).unsqueeze(-1)  # (N, S, K, 1)
    return (vals * w).sum(2) / w.sum(2).clamp_min(1.0)  # (N, S, D)


class CaduceusGenomicsEncoder(Freezable):
    """(B, R, H, L) token ids, or {"ids", "sites"} -> (B, output_dim); see module docstring for the pooling rule."""

    def __init__(
        self,
        n_regions: int,  # R, regions per subject (fixed by the data config)
        checkpoint: str | None = None,  # local folder in the published layout (MaskedLM or backbone); wins if given
        config: dict | None = None,  # else: CaduceusConfig kwargs of a randomly initialised model
        pool: str = "mean",  # "mean" | "sites" | "diff" (module docstring)
        window: int = 0,  # "sites"/"diff": tokens either side of a site's offset that its mean covers
        site_pool: str = "concat",  # "sites"/"diff": "concat" -> S * D per region | "mean" -> D per region
        region_pool: str = "concat",  # "concat" -> R * (per-region width) | "mean" -> per-region width
        freeze: bool = True,  # frozen encoder (genomics.freeze: eval mode, no grad), projector included
        chunk_size: int = 16,  # sequences per forward pass
        dedup: bool = True,  # embed identical sequences once
        cache_size: int = 1_000_000,  # frozen only: sequences whose embedding is memoised (0 = no cache)
        gradient_checkpointing: bool = False,  # only matters when not frozen
        projector: bool = False,  # append a CaduceusProjector (output_dim 512)
        ssm_backend: str | None = None,  # force "torch" | "cpu" | "cuda" | "triton"; None keeps the config's
        reference_ids: Tensor | None = None,  # (R, L) the regions' reference, tokenised (transform encoder_inputs)
        reference_sites: Tensor | None = None,  # (R, S) site offsets in it; "sites"/"diff" take S from it
        cache_dir: str | None = None,  # frozen only: disk cache of pooled embeddings (genomics.embedding_cache)
        site_norm: bool = False,  # "diff": divide each site's block by its training maximum (fit; see fit)
        site_norm_floor: float = 0.1,  # site_norm: scales are at least this x the median site maximum
    ):
        super().__init__()
        if region_pool not in ("concat", "mean"):
            raise ValueError(f"region_pool must be 'concat' or 'mean', got {region_pool!r}")
        if pool not in POOLS or site_pool not in ("concat", "mean") or window < 0:
            raise ValueError(f"pool must be one of {POOLS}, site_pool 'concat' or 'mean', window >= 0; got "
                             f"{pool!r}, {site_pool!r}, {window}")  # fmt: skip
        if pool != "mean" and (reference_sites is None or (pool == "diff" and reference_ids is None)):
            raise ValueError(
                f"pool={pool!r} needs the VCF sites: use genomics.transforms.PersonalSequenceTokens(sites=True), "
                "whose encoder_inputs() give reference_ids and reference_sites"
            )
        if site_norm and pool != "diff":
            raise ValueError(f"site_norm scales reference-subtracted site features: it needs pool='diff', got {pool!r}")
        if checkpoint is None and config is None:
            raise ValueError("give a checkpoint folder (e.g. from experiment=pretrain_caduceus) or a config")
        backbone = Caduceus.from_pretrained(checkpoint) if checkpoint else Caduceus(CaduceusConfig(**dict(config)))
        if ssm_backend is not None:
            backbone.set_ssm_backend(ssm_backend)
        if gradient_checkpointing:
            backbone.backbone.gradient_checkpointing = True
        self.embedder = CaduceusEmbedder(backbone, conjoin=not backbone.config.rcps)
        self.n_regions, self.region_pool = n_regions, region_pool
        self.pool, self.window, self.site_pool = pool, int(window), site_pool
        self.chunk_size, self.dedup, self.cache_size = chunk_size, dedup, cache_size
        self._cache: dict[bytes, Tensor] = {}  # blake2b(ids[, sites]) -> (D,) | (S, D) float32 on CPU
        self.cache_dir, self._disk = cache_dir, None  # the EmbeddingCache of these weights, opened on first use
        self.register_load_state_dict_post_hook(lambda module, keys: module._forget())
        for name, value in (("reference_ids", reference_ids), ("reference_sites", reference_sites)):
            if value is not None:  # not in the state dict: the transform gives them again (export, resume)
                self.register_buffer(name, torch.as_tensor(value, dtype=torch.long), persistent=False)
        self.n_sites = int(reference_sites.shape[-1]) if reference_sites is not None else 0
        self.site_norm, self.site_norm_floor = bool(site_norm), float(site_norm_floor)
        if self.site_norm:  # in the state dict: a checkpoint carries its training-split scales
            self.register_buffer("site_scale", torch.ones(n_regions, self.n_sites))  # (R, S)
            self.register_buffer("fitted", torch.tensor(False))
        d = backbone.config.d_model
        per_region = self.n_sites * d if pool != "mean" and site_pool == "concat" else d
        pooled_dim = n_regions * per_region if region_pool == "concat" else per_region
        self.projector = CaduceusProjector(pooled_dim) if projector else None
        self.output_dim = self.projector.output_dim if projector else pooled_dim
        self.set_freeze(freeze)  # last: the projector too

    def _forget(self) -> None:
        """New weights: drop the memo and the disk cache handle (its folder is named by the old weights)."""
        self._cache.clear()
        self._disk = None

    def disk_cache(self):
        """The genomics.embedding_cache.EmbeddingCache of these weights and pooling settings under cache_dir."""
        if self._disk is None:
            from genomics.embedding_cache import EmbeddingCache, model_identity

            pooling = (
                {"pool": "site_windows", "window": self.window} if self.pool != "mean" else {"pool": "strand_mean"}
            )
            model_id = model_identity(self.embedder.backbone, encoder=type(self).__name__, **pooling)
            self._disk = EmbeddingCache.under(self.cache_dir, model_id)
        return self._disk

    def embed_sequences(self, ids: Tensor, sites: Tensor | None = None) -> Tensor:
        """(N, L) ids [+ (N, S) site offsets] -> (N, D) ("mean") or (N, S, D) ("sites"/"diff"); memoised when frozen
        (in memory, and on disk with cache_dir)."""
        if not self.freeze or (self.cache_size <= 0 and self.cache_dir is None):
            return self._embed(ids, sites)
        if self.cache_size <= 0:
            return self._embed_stored(ids, sites)
        rows = ids.cpu().numpy() if sites is None else torch.cat([ids, sites], 1).cpu().numpy()
        keys = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows]
        todo = {k: i for i, k in enumerate(keys) if k not in self._cache}  # first row of each missing sequence
        if todo:
            idx = list(todo.values())
            fresh = dict(zip(todo, self._embed_stored(ids[idx], None if sites is None else sites[idx]).float().cpu()))
        else:
            fresh = {}
        if len(self._cache) + len(fresh) <= self.cache_size:  # a full cache serves, and stores nothing new
            self._cache.update(fresh)
        return torch.stack([fresh[k] if k in fresh else self._cache[k] for k in keys]).to(ids.device)

    def _embed_stored(self, ids: Tensor, sites: Tensor | None = None) -> Tensor:
        """_embed through the disk cache when cache_dir is set: only sequences it does not hold reach the backbone."""
        if self.cache_dir is None:
            return self._embed(ids, sites)
        length = ids.shape[1]
        rows = ids if sites is None else torch.cat([ids, sites], 1)  # a key covers the ids and the site offsets

        def fn(r: Tensor) -> Tensor:
            return self._embed(r[:, :length], None if sites is None else r[:, length:]).flatten(1)  # (n, D | S*D)

        out = self.disk_cache().embed(rows, fn, chunk_size=self.chunk_size, progress=False)  # (N, D | S*D)
        return out if sites is None else out.reshape(len(ids), sites.shape[1], -1)

    def _embed(self, ids: Tensor, sites: Tensor | None = None) -> Tensor:
        """(N, L) [+ (N, S)] -> (N, D) | (N, S, D), chunk_size sequences per forward pass."""
        rows, inverse = ids if sites is None else torch.cat([ids, sites], 1), None
        if self.dedup:
            rows, inverse = torch.unique(rows, dim=0, return_inverse=True)  # (U, L[+S]), (N,)
        length = ids.shape[1]
        out = []
        with self.no_grad_if_frozen():
            for c in rows.split(self.chunk_size):
                c_ids = c[:, :length]
                h = self.embedder(c_ids)  # (c, L, D, 2)
                if sites is None:
                    out.append(pool_strands(h, c_ids))  # (c, D)
                else:
                    out.append(window_means(token_embeddings(h), c_ids, c[:, length:], self.window))  # (c, S, D)
        out = torch.cat(out, dim=0)
        return out if inverse is None else out[inverse]

    def forward(self, x: Tensor | dict) -> Tensor:
        ids = x["ids"] if isinstance(x, dict) else x
        b, r, h, length = ids.shape
        if r != self.n_regions:
            raise ValueError(f"CaduceusGenomicsEncoder was built for {self.n_regions} regions, got {r}")
        if self.pool == "mean":
            seq = self.embed_sequences(ids.reshape(b * r * h, length))  # (B*R*H, D)
            per_region = seq.reshape(b, r, h, -1).mean(2)  # (B, R, D), haplotypes averaged
        else:
            per_region = self._pool_sites(ids, self._sites_of(x))  # (B, R, S*D) | (B, R, D)
        pooled = per_region.flatten(1) if self.region_pool == "concat" else per_region.mean(1)
        return pooled if self.projector is None else self.projector(pooled)  # (B, output_dim)

    def _sites_of(self, x) -> Tensor:
        sites = x.get("sites") if isinstance(x, dict) else None
        if sites is None:
            raise ValueError(f"pool={self.pool!r} needs the site offsets: PersonalSequenceTokens(sites=True) input")
        if sites.shape[-1] != self.n_sites:
            raise ValueError(f"built for {self.n_sites} sites per region (reference_sites), got {sites.shape[-1]}")
        return sites

    def _site_features(self, ids: Tensor, sites: Tensor) -> tuple[Tensor, Tensor]:
        """ids (B, R, H, L), sites (B, R, H, S) -> (B, R, S, D) haplotype-averaged site features (minus the
        reference's for "diff"; an absent site counts as zeros), and (B, R, S, 1) whether any haplotype has it."""
        b, r, h, length = ids.shape
        s = sites.shape[-1]
        emb = self.embed_sequences(ids.reshape(-1, length), sites.reshape(-1, s)).reshape(b, r, h, s, -1)
        present = (sites >= 0).unsqueeze(-1)  # (B, R, H, S, 1)
        if self.pool == "diff":
            ref = self.embed_sequences(self.reference_ids, self.reference_sites)  # (R, S, D), memoised
            present = present & (self.reference_sites >= 0)[None, :, None, :, None]
            emb = emb - ref[None, :, None]
        return (emb * present).mean(2), present.any(2)  # (B, R, S, D), (B, R, S, 1)

    def _pool_sites(self, ids: Tensor, sites: Tensor) -> Tensor:
        """ids (B, R, H, L), sites (B, R, H, S) -> (B, R, S*D) ("concat") | (B, R, D) ("mean")."""
        emb, present = self._site_features(ids, sites)
        if self.site_norm:
            if not bool(self.fitted):
                raise RuntimeError("site_norm=True needs fit() on the training subjects' inputs before use")
            emb = emb / self.site_scale[None, :, :, None].to(emb.dtype)
        if self.site_pool == "concat":
            return emb.flatten(2)  # (B, R, S*D)
        return emb.sum(2) / present.sum(2).clamp_min(1)  # (B, R, D), the mean over the sites present

    def fit(self, inputs: Iterable, batch_size: int = 32) -> None:
        """site_norm: each site's scale = the largest norm its (haplotype-averaged, reference-subtracted) feature
        block reaches over `inputs` (the training subjects' transform outputs, one dict each), floored at
        site_norm_floor x the median over sites of that maximum (a site no training subject carries is not blown
        up). A no-op otherwise. Sets `fitted`."""
        if not self.site_norm:
            return
        best = torch.zeros_like(self.site_scale)  # (R, S)
        batch: list = []
        device = self.site_scale.device
        with torch.no_grad():
            for item in [*inputs, None]:
                if item is not None:
                    batch.append(item)
                if batch and (item is None or len(batch) == batch_size):
                    x = {k: v.to(device) for k, v in default_collate(batch).items()}
                    emb, _ = self._site_features(x["ids"], self._sites_of(x))  # (B, R, S, D)
                    best = torch.maximum(best, emb.float().norm(dim=-1).amax(0))
                    batch = []
        seen = best[best > 0]
        floor = self.site_norm_floor * seen.median() if len(seen) else torch.tensor(1.0)
        self.site_scale.copy_(torch.maximum(best, floor.clamp_min(1e-12)))
        self.fitted.fill_(True)
