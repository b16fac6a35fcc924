"""SigLipLoss against the paper's formula written out (float64), its gradients (temperature, bias), the config group,
and the chunked multi-rank loss (gloo, 2 CPU processes) against the single-process one."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from fusion.losses import ClipLoss, SigLipLoss


def direct_siglip(g, b, t, bias):
    """-1/B sum_ij log sigmoid(y_ij (t g_i.b_j + bias)), y = +1 on the diagonal, -1 elsewhere (Zhai et al. 2023)."""
    n = g.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            y = 1.0 if i == j else -1.0
            total += math.log(1 + math.exp(-y * (t * float(g[i] @ b[j]) + bias)))
    return total / n


def unit(*shape, seed=0):
    torch.manual_seed(seed)
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def test_siglip_matches_the_formula_and_starts_at_the_papers_bias():
    g, b = unit(6, 16), unit(6, 16, seed=1)
    loss = SigLipLoss(init_logit_bias=-10.0).double()
    assert loss.logit_bias.item() == -10.0 and loss.logit_bias.requires_grad
    value = loss(g, b, torch.tensor(10.0, dtype=torch.float64))
    assert abs(value.item() - direct_siglip(g, b, 10.0, -10.0)) < 1e-10
    other = SigLipLoss(init_logit_bias=2.5).double()(g, b, torch.tensor(3.0, dtype=torch.float64))
    assert abs(other.item() - direct_siglip(g, b, 3.0, 2.5)) < 1e-10


def test_siglip_gradients_in_temperature_and_bias_match_finite_differences():
    g, b = unit(5, 8), unit(5, 8, seed=2)
    log_t = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)
    loss = SigLipLoss().double()
    loss(g, b, log_t.exp()).backward()
    eps = 1e-6
    t_up, t_down = math.exp(log_t.item() + eps), math.exp(log_t.item() - eps)
    d_t = direct_siglip(g, b, t_up, -10) - direct_siglip(g, b, t_down, -10)
    d_b = direct_siglip(g, b, 10.0, -10 + eps) - direct_siglip(g, b, 10.0, -10 - eps)
    assert math.isclose(log_t.grad.item(), d_t / (2 * eps), rel_tol=1e-5)
    assert math.isclose(loss.logit_bias.grad.item(), d_b / (2 * eps), rel_tol=1e-5)


def test_siglip_rewards_alignment_and_is_the_same_both_ways():
    g = torch.eye(6, dtype=torch.float64)
    loss, t = SigLipLoss(init_logit_bias=-5.0).double(), torch.tensor(20.0, dtype=torch.float64)
    assert loss(g, g, t) < loss(g, g.roll(1, 0), t)
    g, b = unit(7, 8), unit(7, 8, seed=3)
    assert torch.isclose(loss(g, b, t), loss(b, g, t))  # every pair term serves both directions


def test_clip_direction_weight_is_checked():
    with pytest.raises(ValueError, match="weight_g2b"):
        ClipLoss(weight_g2b=1.5)


def test_the_siglip_option_sets_the_bias_and_the_models_temperature(tmp_path, train_config):
    from hydra.utils import instantiate

    cfg = train_config(tmp_path, tmp_path / "cache", ["loss=siglip"], tiny=False)
    assert cfg.loss._target_ == "fusion.losses.SigLipLoss" and cfg.model.loss == cfg.loss
    assert math.isclose(cfg.model.net.logit_scale.init, math.log(10.0))  # t' = ln 10
    assert train_config(tmp_path, tmp_path / "cache", [], tiny=False).model.net.logit_scale.init == pytest.approx(
        math.log(1 / 0.07)
    )  # CLIP keeps its own
    scale = instantiate(cfg.model.net.logit_scale)
    assert math.isclose(scale().item(), 10.0, rel_tol=1e-6) and instantiate(cfg.loss).logit_bias.item() == -10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, g_all, b_all, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        n = g_all.shape[0] // world
        g = g_all[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        b = b_all[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        loss = SigLipLoss(init_logit_bias=-3.0).double()
        value = loss(g, b, torch.tensor(10.0, dtype=torch.float64))
        value.backward()
        out[rank] = {"loss": value.detach(), "g": g.grad, "b": b.grad, "bias": loss.logit_bias.grad}
    finally:
        dist.destroy_process_group()


def test_siglip_across_two_ranks_equals_the_global_loss():
    world, n = 2, 4
    g_all, b_all = unit(world * n, 8, seed=4), unit(world * n, 8, seed=5)
    g_all = F.normalize(g_all + 0.5 * b_all, dim=-1)  # some alignment, so positives matter
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(world, _free_port(), g_all, b_all, out), nprocs=world, join=True)
        out = dict(out)
    g, b = g_all.clone().requires_grad_(True), b_all.clone().requires_grad_(True)
    loss = SigLipLoss(init_logit_bias=-3.0).double()
    value = loss(g, b, torch.tensor(10.0, dtype=torch.float64))
    value.backward()
    # DDP averages parameter gradients over ranks: the mean of the local losses and of their gradients is the global
    assert torch.allclose((out[0]["loss"] + out[1]["loss"]) / world, value, atol=1e-12)
    assert torch.allclose(torch.cat([out[0]["g"], out[1]["g"]]) / world, g.grad, atol=1e-12)
    assert torch.allclose(torch.cat([out[0]["b"], out[1]["b"]]) / world, b.grad, atol=1e-12)
    assert torch.allclose((out[0]["bias"] + out[1]["bias"]) / world, loss.logit_bias.grad, atol=1e-12)
