"""Retrieval statistics: memory-bounded chunking, the bootstrap on fixed cases, the shuffled-pairing baseline (the
120k-subject scale check is experiments/benchmarks/bench_retrieval.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fusion.evaluation.retrieval import bootstrap_intervals, retrieval_statistics, shuffled_baseline
from fusion.metrics import RetrievalMetrics, rank_statistics, retrieval_ranks


def paired(n, d=16, signal=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    zg = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    zb = F.normalize(signal * zg + torch.randn(n, d, generator=g), dim=-1)
    return zg, zb


def test_chunks_bounded_by_max_elements_give_the_same_ranks(monkeypatch):
    zg, zb = paired(300)
    full = retrieval_ranks(zg, zb, chunk_size=10_000, max_elements=10**9)  # one chunk
    shapes = []
    real_matmul = torch.Tensor.__matmul__

    def spy(a, b):
        out = real_matmul(a, b)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    small = retrieval_ranks(zg, zb, chunk_size=10_000, max_elements=300 * 7)  # 7 queries at a time
    assert torch.equal(full, small)
    assert max(s[0] for s in shapes) == 7 and all(s[1] == 300 for s in shapes) and len(shapes) == 43


def test_rank_statistics_match_the_logged_metric():
    zg, zb = paired(50, signal=0.7)
    m = RetrievalMetrics()
    m.update(zg, zb, torch.arange(50))
    logged = m.compute()
    stats = retrieval_statistics(zg, zb, n_resamples=0, n_permutations=0)
    assert stats["n"] == 50
    for key in ("g2b/R@1", "g2b/R@10", "b2g/mean_rank", "b2g/median_rank", "g2b/median_rank"):
        assert stats[key] == pytest.approx(logged[key].item(), abs=1e-6), key


def test_median_is_the_lower_median_as_torch():
    ranks = np.array([4, 1, 3, 2])
    assert rank_statistics(ranks)["median_rank"] == torch.tensor(ranks).median().item() == 2


def test_bootstrap_fixed_case_two_subjects():
    # ranks [1, 7]: a resample holds 0, 1 or 2 copies of the rank-1 subject (p = 1/4, 1/2, 1/4), so R@1 is 0, .5 or 1:
    # the 2.5% and 97.5% percentiles are 0 and 1; the mean rank 7, 4 or 1: interval (1, 7)
    ci = bootstrap_intervals(np.array([1, 7]), n_resamples=4000, seed=0)
    assert ci["R@1"] == (0.0, 1.0) and ci["mean_rank"] == (1.0, 7.0) and ci["R@10"] == (1.0, 1.0)


def test_bootstrap_degenerate_collapses_and_is_reproducible():
    ci = bootstrap_intervals(np.ones(30), n_resamples=200)
    assert ci["R@1"] == (1.0, 1.0) and ci["median_rank"] == (1.0, 1.0)
    ranks = np.random.default_rng(3).integers(1, 40, 120)
    a, b = bootstrap_intervals(ranks, seed=5), bootstrap_intervals(ranks, seed=5)
    assert a == b and bootstrap_intervals(ranks, seed=6) != a


def test_bootstrap_interval_of_a_proportion_matches_its_binomial_width():
    # 400 subjects, 120 at rank 1: R@1 = 0.3 with standard error sqrt(.3 * .7 / 400) = 0.0229; 95% = +-0.0449
    ranks = np.array([1] * 120 + [50] * 280)
    lo, hi = bootstrap_intervals(ranks, n_resamples=4000, seed=0)["R@1"]
    assert lo < 0.3 < hi
    assert hi - lo == pytest.approx(2 * 1.96 * np.sqrt(0.3 * 0.7 / 400), rel=0.1)


def test_statistics_carry_intervals_and_shuffled_names():
    zg, zb = paired(60, signal=8.0)
    stats = retrieval_statistics(zg, zb, n_resamples=300, n_permutations=5)
    for direction in ("g2b", "b2g"):
        for k in ("R@1", "R@5", "R@10", "mean_rank", "median_rank"):
            point, lo, hi = (stats[f"{direction}/{k}{s}"] for s in ("", "_lo", "_hi"))
            assert lo <= point <= hi, (direction, k, lo, point, hi)
            assert f"shuffled/{direction}/{k}" in stats
    assert stats["g2b/R@1"] > 0.5 > stats["shuffled/g2b/R@1"]  # a strong link, chance on shuffled pairs


def test_shuffled_baseline_measures_chance():
    zg, zb = paired(200, signal=8.0)  # strongly paired: R@1 near 1 for the true pairs
    shuffled = shuffled_baseline(zg, zb, n_permutations=20, seed=1)
    assert shuffled["g2b/R@1"] == pytest.approx(1 / 200, abs=0.01)
    assert shuffled["b2g/mean_rank"] == pytest.approx(100.5, rel=0.15)  # uniform ranks 1..200
    assert shuffled == shuffled_baseline(zg, zb, n_permutations=20, seed=1)


def test_mismatched_embeddings_are_refused():
    with pytest.raises(ValueError, match="paired"):
        retrieval_statistics(torch.zeros(4, 3), torch.zeros(5, 3))
