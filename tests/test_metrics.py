import numpy as np
import torch
import torch.nn.functional as F

from fusion.metrics import RetrievalMetrics, retrieval_ranks


def brute_force_ranks(q, g):
    """Rank of the true partner by sorting every row (ties: the partner goes last among equals)."""
    sims = (q @ g.T).numpy()
    ranks = []
    for i, row in enumerate(sims):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j == i))
        ranks.append(order.index(i) + 1)
    return np.array(ranks)


def test_ranks_match_brute_force_in_chunks():
    torch.manual_seed(0)
    q, g = F.normalize(torch.randn(53, 12), dim=-1), F.normalize(torch.randn(53, 12), dim=-1)
    g = F.normalize(g + 0.8 * q, dim=-1)  # partners somewhat similar
    for chunk in (1, 7, 1024):
        assert (retrieval_ranks(q, g, chunk_size=chunk).numpy() == brute_force_ranks(q, g)).all()


def test_ties_rank_the_partner_behind_equal_scores():
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert retrieval_ranks(q, g).tolist() == [2, 2, 1]


def test_metric_both_directions_and_summary():
    torch.manual_seed(1)
    zg, zb = F.normalize(torch.randn(40, 8), dim=-1), F.normalize(torch.randn(40, 8), dim=-1)
    zb[:10] = zg[:10]  # 10 subjects perfectly retrievable
    m = RetrievalMetrics()
    for s in range(0, 40, 16):
        m.update(zg[s : s + 16], zb[s : s + 16], torch.arange(s, min(s + 16, 40)))
    out = m.compute()
    for direction, (q, g) in {"g2b": (zg, zb), "b2g": (zb, zg)}.items():
        ranks = brute_force_ranks(q, g)
        for k in (1, 5, 10):
            assert np.isclose(out[f"{direction}/R@{k}"].item(), np.mean(ranks <= k))
        assert np.isclose(out[f"{direction}/mean_rank"].item(), ranks.mean())
        assert out[f"{direction}/median_rank"].item() == torch.tensor(ranks, dtype=torch.float).median().item()
    assert out["g2b/R@1"] >= 0.25 and out["n"] == 40


def test_duplicated_samples_are_counted_once():
    torch.manual_seed(2)
    zg, zb = F.normalize(torch.randn(10, 4), dim=-1), F.normalize(torch.randn(10, 4), dim=-1)
    once, padded = RetrievalMetrics(), RetrievalMetrics()
    once.update(zg, zb, torch.arange(10))
    padded.update(zg, zb, torch.arange(10))
    padded.update(zg[:3], zb[:3], torch.arange(3))  # DistributedSampler padding repeats samples
    a, b = once.compute(), padded.compute()
    assert all(torch.equal(a[k], b[k]) for k in a)
