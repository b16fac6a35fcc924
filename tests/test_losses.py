import math

import torch
import torch.nn.functional as F

from fusion.losses import ClipLoss, LogitScale


def direct_clip_loss(g, b, scale):
    """Symmetric InfoNCE written out term by term (float64)."""
    n = g.shape[0]
    total = 0.0
    for i in range(n):
        s_row = [scale * float(g[i] @ b[j]) for j in range(n)]
        s_col = [scale * float(b[i] @ g[j]) for j in range(n)]
        total += -(s_row[i] - math.log(sum(math.exp(s) for s in s_row)))
        total += -(s_col[i] - math.log(sum(math.exp(s) for s in s_col)))
    return total / (2 * n)


def test_clip_loss_matches_direct_computation():
    torch.manual_seed(0)
    g = F.normalize(torch.randn(7, 16, dtype=torch.float64), dim=-1)
    b = F.normalize(torch.randn(7, 16, dtype=torch.float64), dim=-1)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    loss = ClipLoss()(g, b, scale)
    assert abs(loss.item() - direct_clip_loss(g, b, scale.item())) < 1e-10


def test_asymmetric_weighting_interpolates_directions():
    torch.manual_seed(1)
    g, b = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    s = torch.tensor(10.0)
    only_g2b, only_b2g = ClipLoss(weight_g2b=1.0)(g, b, s), ClipLoss(weight_g2b=0.0)(g, b, s)
    assert not torch.isclose(only_g2b, only_b2g)
    assert torch.isclose(ClipLoss(weight_g2b=0.75)(g, b, s), 0.75 * only_g2b + 0.25 * only_b2g)


def test_perfectly_aligned_pairs_have_low_loss():
    g = torch.eye(6)
    assert ClipLoss()(g, g, torch.tensor(100.0)) < 1e-3 < ClipLoss()(g, g.roll(1, 0), torch.tensor(100.0))


def test_logit_scale_init_and_clamp():
    ls = LogitScale()
    assert math.isclose(ls().item(), 1 / 0.07, rel_tol=1e-6)
    with torch.no_grad():
        ls.log_scale.fill_(10.0)
    ls.clamp_()
    assert math.isclose(ls().item(), 100.0, rel_tol=1e-5)
    with torch.no_grad():
        ls.log_scale.fill_(-3.0)
    ls.clamp_()
    assert ls().item() == 1.0
