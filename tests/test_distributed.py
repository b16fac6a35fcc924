"""Contrastive loss and retrieval metrics under torch.distributed (gloo, 2 CPU processes) equal the global ones."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from fusion.losses import ClipLoss
from fusion.metrics import RetrievalMetrics


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
        loss = ClipLoss()(F.normalize(g, dim=-1), F.normalize(b, dim=-1), torch.tensor(14.0))
        loss.backward()
        # DDP averages gradients over ranks: the averaged local losses' gradients equal the global loss's gradients
        grads = torch.cat([g.grad, b.grad], dim=1)
        metric = RetrievalMetrics()
        idx = torch.arange(rank * n, (rank + 1) * n)
        metric.update(F.normalize(g_all[idx], dim=-1), F.normalize(b_all[idx], dim=-1), idx)
        values = metric.compute()
        out[rank] = {"loss": loss.detach(), "grads": grads, "metrics": {k: v.clone() for k, v in values.items()}}
    finally:
        dist.destroy_process_group()


def test_local_loss_with_gather_equals_global_loss():
    torch.manual_seed(0)
    world, n, d = 2, 5, 8
    g_all, b_all = torch.randn(world * n, d), torch.randn(world * n, d)
    g_all[:3] += 2 * b_all[:3]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(world, _free_port(), g_all, b_all, out), nprocs=world, join=True)
        out = dict(out)

    g, b = g_all.clone().requires_grad_(True), b_all.clone().requires_grad_(True)
    loss = ClipLoss()(F.normalize(g, dim=-1), F.normalize(b, dim=-1), torch.tensor(14.0))
    loss.backward()
    mean_loss = (out[0]["loss"] + out[1]["loss"]) / 2
    assert torch.allclose(mean_loss, loss, atol=1e-6)
    # each rank's rows get gradient contributions from both ranks (gather_with_grad); DDP then divides by world
    ddp_grads = torch.cat([out[0]["grads"], out[1]["grads"]]) / world
    assert torch.allclose(ddp_grads, torch.cat([g.grad, b.grad], dim=1), atol=1e-6)

    full = RetrievalMetrics()
    full.update(F.normalize(g_all, dim=-1), F.normalize(b_all, dim=-1), torch.arange(world * n))
    expected = full.compute()
    for rank in range(world):  # every rank sees the metrics over the whole gallery
        assert all(torch.allclose(out[rank]["metrics"][k], expected[k]) for k in expected)
