"""Retrieval statistics a reviewer accepts: the point estimates of fusion.metrics with a 95% bootstrap interval over
test subjects, and a shuffled-pairing baseline that measures chance on the same embeddings.

- Interval: percentile bootstrap (scipy.stats.bootstrap, Efron & Tibshirani 1993) over the test subjects. Each
  subject's rank is computed once against the whole test gallery (fusion.metrics.retrieval_ranks, chunked); a
  resample draws subjects with replacement and recomputes every statistic of fusion.metrics.rank_statistics from
  their ranks. Both directions use the same seed, hence the same resampled subjects. The gallery stays the full test
  split, as in the point estimate: the interval is over "which subjects were tested", the usual retrieval bootstrap.
- Shuffled pairing: the same model's test embeddings with the pairs permuted (subject i's genome paired with subject
  pi(i)'s brain), ranks and statistics as for the true pairs, averaged over `n_permutations` seeded permutations. It
  measures the chance level of this very gallery (1/N for R@1 in expectation; ties and hubs make it differ).

Names follow fusion.metrics: "g2b/R@1", plus "g2b/R@1_lo" / "g2b/R@1_hi" and "shuffled/g2b/R@1". Library code: no
Lightning, no Hydra.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import bootstrap
from torch import Tensor

from fusion.metrics import DIRECTIONS, direction_ranks, rank_statistics

SHUFFLED = "shuffled"  # prefix of the shuffled-pairing baseline's metric names


def bootstrap_intervals(
    ranks: np.ndarray,  # (N,) 1-based ranks of the true partners
    ks=(1, 5, 10),
    n_resamples: int = 1000,  # bootstrap resamples of the N subjects
    level: float = 0.95,  # coverage of the interval
    seed: int = 0,  # seeds the resampling (same seed, same interval)
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of every rank_statistics statistic -> {"R@1": (lo, hi), ...}."""
    ranks = np.asarray(ranks, dtype=np.float64)
    names = list(rank_statistics(ranks, ks))
    if len(ranks) < 2:  # nothing to resample: the interval is the point
        point = rank_statistics(ranks, ks)
        return {k: (float(point[k]), float(point[k])) for k in names}

    def statistic(sample, axis=-1):  # (..., N) -> (S, ...) the statistics of each resample
        stats = rank_statistics(sample, ks, axis=axis)
        return np.stack([stats[k] for k in names])

    res = bootstrap(
        (ranks,),
        statistic,
        n_resamples=n_resamples,
        confidence_level=level,
        method="percentile",
        vectorized=True,
        batch=max(1, (1 << 22) // len(ranks)),  # resamples held at once: bounded memory for large N
        rng=np.random.default_rng(seed),
    )
    lo, hi = np.atleast_1d(res.confidence_interval.low), np.atleast_1d(res.confidence_interval.high)
    return {k: (float(lo[i]), float(hi[i])) for i, k in enumerate(names)}


def shuffled_baseline(
    z_genomics: Tensor,  # (N, D) unit vectors, row i = subject i
    z_brain: Tensor,  # (N, D)
    ks=(1, 5, 10),
    n_permutations: int = 10,  # permutations of the pairing; their statistics are averaged
    seed: int = 0,
) -> dict[str, float]:
    """Mean over permutations pi of the retrieval statistics of the pairs (z_genomics[i], z_brain[pi(i)]) ->
    {"g2b/R@1": ..., "b2g/median_rank": ...} (without the "shuffled/" prefix)."""
    generator = torch.Generator().manual_seed(seed)
    totals: dict[str, float] = {}
    for _ in range(n_permutations):
        perm = torch.randperm(len(z_brain), generator=generator).to(z_brain.device)  # (N,)
        ranks = direction_ranks({"genomics": z_genomics, "brain": z_brain[perm]})
        for name, r in ranks.items():
            for k, v in rank_statistics(r.cpu().numpy(), ks).items():
                totals[f"{name}/{k}"] = totals.get(f"{name}/{k}", 0.0) + float(v) / n_permutations
    return totals


def retrieval_statistics(
    z_genomics: Tensor | np.ndarray,  # (N, D) paired by row with z_brain (any scale: compared by dot product)
    z_brain: Tensor | np.ndarray,  # (N, D)
    ks=(1, 5, 10),
    n_resamples: int = 1000,  # bootstrap resamples (0 = no interval)
    level: float = 0.95,  # interval coverage
    n_permutations: int = 10,  # shuffled-pairing permutations (0 = no baseline)
    seed: int = 0,  # seeds the bootstrap and the permutations
) -> dict[str, float]:
    """{"n", "g2b/R@1", "g2b/R@1_lo", "g2b/R@1_hi", ..., "shuffled/g2b/R@1", ...} for both directions."""
    z = {"genomics": torch.as_tensor(z_genomics).float(), "brain": torch.as_tensor(z_brain).float()}
    if z["genomics"].shape != z["brain"].shape or z["genomics"].ndim != 2:
        shapes = f"{tuple(z['genomics'].shape)} and {tuple(z['brain'].shape)}"
        raise ValueError(f"paired (N, D) embeddings expected (row i of each = subject i), got {shapes}")
    out = {"n": float(len(z["genomics"]))}
    for name, ranks in direction_ranks(z).items():
        ranks = ranks.cpu().numpy()
        for k, v in rank_statistics(ranks, ks).items():
            out[f"{name}/{k}"] = float(v)
        if n_resamples > 0:
            for k, (lo, hi) in bootstrap_intervals(ranks, ks, n_resamples, level, seed).items():
                out[f"{name}/{k}_lo"], out[f"{name}/{k}_hi"] = lo, hi
    if n_permutations > 0:
        shuffled = shuffled_baseline(z["genomics"], z["brain"], ks, n_permutations, seed)
        out |= {f"{SHUFFLED}/{k}": v for k, v in shuffled.items()}
    return out


__all__ = ["DIRECTIONS", "SHUFFLED", "bootstrap_intervals", "retrieval_statistics", "shuffled_baseline"]
