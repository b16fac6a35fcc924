"""Feature-cached gradient accumulation (fusion.accumulation, model.accum_freq) equals one big batch: the loss and
every gradient (towers, temperature, SigLIP bias), for CLIP and SigLIP, with uneven micro-batches and with dropout; and
the Lightning module's manual-optimisation path gives the automatic path's gradients on the demo cohort."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fusion.accumulation import accumulate_gradients, split_batch
from fusion.losses import ClipLoss, LogitScale, SigLipLoss


class Towers(nn.Module):
    """Two small towers (Linear, GELU, Dropout, Linear -> l2) and a learnable temperature, in float64."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        torch.manual_seed(0)
        self.g = nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Dropout(dropout), nn.Linear(32, 16)).double()
        self.b = nn.Sequential(nn.Linear(20, 32), nn.GELU(), nn.Dropout(dropout), nn.Linear(32, 16)).double()
        self.logit_scale = LogitScale().double()

    def forward(self, pair):
        x_g, x_b = pair
        return F.normalize(self.g(x_g), dim=-1), F.normalize(self.b(x_b), dim=-1)  # (n, 16) each


def grads(*modules) -> dict:
    out = {}
    for i, m in enumerate(modules):
        out |= {f"{i}.{k}": p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}
    return out


def batch(n=10, seed=1):
    torch.manual_seed(seed)
    x_g, x_b = torch.randn(n, 12, dtype=torch.float64), torch.randn(n, 20, dtype=torch.float64)
    return x_g, x_b


@pytest.mark.parametrize("objective", ["clip", "siglip"])
@pytest.mark.parametrize("k", [2, 3])  # 10 pairs: 5+5, and the uneven 4+3+3
def test_accumulated_loss_and_gradients_equal_one_big_batch(objective, k):
    model = Towers()
    loss_fn = ClipLoss(weight_g2b=0.7) if objective == "clip" else SigLipLoss(init_logit_bias=-2.0).double()
    x = batch()

    z_g, z_b = model(x)
    big = loss_fn(z_g, z_b, model.logit_scale())
    big.backward()
    expected = grads(model, loss_fn)
    model.zero_grad(), loss_fn.zero_grad()

    micro = list(zip(split_batch(x[0], k), split_batch(x[1], k)))
    assert [m[0].shape[0] for m in micro] == ([5, 5] if k == 2 else [4, 3, 3])
    shared = [*model.logit_scale.parameters(), *loss_fn.parameters()]
    value = accumulate_gradients(micro, model, lambda g, b: loss_fn(g, b, model.logit_scale()), shared)
    got = grads(model, loss_fn)
    assert torch.allclose(value, big.detach(), atol=1e-12)
    assert got.keys() == expected.keys() and "0.logit_scale.log_scale" in got
    if objective == "siglip":
        assert "1.logit_bias" in got
    for key in expected:
        assert torch.allclose(got[key], expected[key], atol=1e-10), key


def test_dropout_masks_of_the_cached_pass_are_replayed():
    """With dropout on, the gradient is the one of the K micro-batches embedded once with grad from the same random
    state (each re-forward sees its cached pass's masks), and the random stream ends where that single pass left it."""
    model, loss_fn = Towers(dropout=0.3), ClipLoss()
    micro = list(zip(split_batch(batch()[0], 2), split_batch(batch()[1], 2)))
    objective = lambda g, b: loss_fn(g, b, model.logit_scale())  # noqa: E731

    torch.manual_seed(7)
    z = [model(m) for m in micro]
    reference = objective(torch.cat([a for a, _ in z]), torch.cat([b for _, b in z]))
    reference.backward()
    expected, after_reference = grads(model), torch.rand(1)
    model.zero_grad()

    torch.manual_seed(7)
    value = accumulate_gradients(micro, model, objective, list(model.logit_scale.parameters()))
    assert torch.allclose(value, reference.detach(), atol=1e-12) and torch.equal(torch.rand(1), after_reference)
    got = grads(model)
    for key in expected:
        assert torch.allclose(got[key], expected[key], atol=1e-10), key


def test_split_batch_keeps_structures_and_refuses_too_small_batches():
    parts = split_batch({"ids": torch.arange(6), "sites": [torch.zeros(6, 2), "keep"]}, 3)
    assert [p["ids"].tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]]
    assert parts[1]["sites"][0].shape == (2, 2) and parts[2]["sites"][1] == "keep"
    with pytest.raises(ValueError, match="accum_freq=4"):
        split_batch(torch.zeros(3, 2), 4)


class FirstStepGradients(L.Callback):
    """The gradients the optimiser is about to apply at the first step, then stop."""

    def __init__(self):
        self.grads = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.grads is None:
            self.grads = {k: p.grad.detach().clone() for k, p in pl_module.named_parameters() if p.grad is not None}
        trainer.should_stop = True


def first_step(tmp_path, cache, train_config, overrides, clip=None):
    from fusion.app.build import build
    from fusion.app.cohort_source import resolve_cohort

    # no dropout, no batch statistics: the only difference between the two paths is the accumulation
    plain = ["genomics.head.dropout=0", "brain.head.dropout=0", "genomics.head.input_norm=false"]
    plain += ["brain.head.input_norm=false", "data.batch_size=8"]
    cfg = train_config(tmp_path, cache, plain + overrides)
    resolve_cohort(cfg)  # the tiny demo cohort's files
    L.seed_everything(0)
    run = build(cfg)
    grab = FirstStepGradients()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        callbacks=[grab],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        gradient_clip_val=clip,
    )
    trainer.fit(run.model, datamodule=run.datamodule)
    return run.model, grab.grads, trainer


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_the_module_accumulates_as_one_batch_on_the_demo(loss, tmp_path, demo_cache, train_config):
    _, one, _ = first_step(tmp_path / "a", demo_cache, train_config, [f"loss={loss}"])
    accumulate = [f"loss={loss}", "model.accum_freq=4"]
    module, accumulated, trainer = first_step(tmp_path / "b", demo_cache, train_config, accumulate)
    assert not module.automatic_optimization and trainer.global_step == 1  # one optimiser step for the 8-pair batch
    assert one.keys() == accumulated.keys() and "net.logit_scale.log_scale" in one
    assert ("loss.logit_bias" in one) == (loss == "siglip")
    for key in one:  # float32 sums in another order: equal to 1e-4 of each tensor's norm
        assert (accumulated[key] - one[key]).norm() <= 1e-4 * one[key].norm(), key
    assert any(one[key].norm() > 0 for key in one)
    if loss == "clip":  # the trainer's clipping, taken over by the module: the same gradient scaled to norm 1
        _, clipped, _ = first_step(tmp_path / "c", demo_cache, train_config, ["model.accum_freq=4"], clip=1.0)
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in one.values()]))
        assert norm > 1.0
        for key in one:
            assert (clipped[key] - one[key] / norm).norm() <= 1e-4 * one[key].norm() / norm, key


def test_accumulation_trains_through_fusion_train_with_clipping(tmp_path, demo_cache, train_config):
    from fusion.train import train

    cfg = train_config(tmp_path, demo_cache, ["model.accum_freq=2", "trainer.max_epochs=2", "test=false"])
    assert cfg.trainer.gradient_clip_val == 1.0
    metrics, objs = train(cfg)
    assert objs["trainer"].global_step == 4 and torch.isfinite(torch.tensor(metrics["train/loss"]))  # 2 x 8 / 4
    assert objs["model"]._clip[0] == 1.0 and objs["trainer"].gradient_clip_val is None  # the module clips


@pytest.mark.slow
def test_accumulation_under_ddp_on_two_cpu_processes(tmp_path, demo_cache, train_config):
    """Manual optimisation with K backward passes per step under DDP (Lightning prepares the reducer per
    manual_backward): it trains, and the test split is scored once per subject."""
    from fusion.train import train

    cfg = train_config(tmp_path, demo_cache, ["trainer=ddp_cpu", "trainer.max_epochs=1", "model.accum_freq=2"])
    metrics, objs = train(cfg)
    assert objs["trainer"].world_size == 2 and torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert metrics["test/n"] == objs["datamodule"].split_sizes()["test"]
