"""Cross-modal retrieval metrics as a torchmetrics Metric (accumulates embeddings, syncs them across DDP ranks).

For each query subject the rank (1-based) of its own partner among all gallery subjects, in both directions
(genome->brain: genomics queries a brain gallery; brain->genome the reverse). Reported: R@1, R@5, R@10, mean rank,
median rank. Similarities are computed in query chunks (never the full N x N at once). Ties are broken
deterministically against the true partner: a gallery item with an equal score counts as ranked ahead of it.
Samples seen twice (DistributedSampler pads the last batch with duplicates) are counted once, by sample index.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

DIRECTIONS = {"g2b": ("genomics", "brain"), "b2g": ("brain", "genomics")}


def retrieval_ranks(queries: Tensor, gallery: Tensor, chunk_size: int = 1024) -> Tensor:
    """queries, gallery: (N, D), row i of each is one subject -> (N,) 1-based rank of gallery[i] for queries[i]."""
    ranks = []
    for start in range(0, queries.shape[0], chunk_size):
        q = queries[start : start + chunk_size]  # (C, D)
        sims = q @ gallery.T  # (C, N)
        idx = torch.arange(start, start + q.shape[0], device=q.device)
        true = sims.gather(1, idx[:, None])  # (C, 1)
        ahead = (sims >= true).sum(1) - 1  # (C,) items scoring at least the partner, partner excluded
        ranks.append(ahead + 1)
    return torch.cat(ranks)


def summarize_ranks(ranks: Tensor, ks=(1, 5, 10)) -> dict[str, Tensor]:
    ranks = ranks.float()
    out = {f"R@{k}": (ranks <= k).float().mean() for k in ks}
    out["mean_rank"] = ranks.mean()
    out["median_rank"] = ranks.median()
    return out


class RetrievalMetrics(Metric):
    """update(z_genomics (B, D), z_brain (B, D), index (B,)); compute() -> {"g2b/R@1": ..., "b2g/median_rank": ...}."""

    full_state_update = False

    def __init__(self, ks=(1, 5, 10), chunk_size: int = 1024, **kwargs):
        super().__init__(**kwargs)
        self.ks, self.chunk_size = tuple(ks), chunk_size
        self.add_state("genomics", default=[], dist_reduce_fx="cat")
        self.add_state("brain", default=[], dist_reduce_fx="cat")
        self.add_state("index", default=[], dist_reduce_fx="cat")

    def update(self, z_genomics: Tensor, z_brain: Tensor, index: Tensor) -> None:
        self.genomics.append(z_genomics.detach().float())
        self.brain.append(z_brain.detach().float())
        self.index.append(index.detach().long())

    def compute(self) -> dict[str, Tensor]:
        z = {"genomics": dim_zero_cat(self.genomics), "brain": dim_zero_cat(self.brain)}
        index = dim_zero_cat(self.index)
        order = torch.argsort(index, stable=True)  # sort by sample index, keep the first copy of duplicates
        keep = torch.ones_like(order, dtype=torch.bool)
        keep[1:] = index[order][1:] != index[order][:-1]
        z = {k: v[order][keep] for k, v in z.items()}
        out = {"n": torch.tensor(float(keep.sum()))}
        for name, (query, gallery) in DIRECTIONS.items():
            ranks = retrieval_ranks(z[query], z[gallery], self.chunk_size)
            out |= {f"{name}/{k}": v for k, v in summarize_ranks(ranks, self.ks).items()}
        return out
