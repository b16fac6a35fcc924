"""Caduceus models: published parameter layout, fused add-norm half swap, RC equivariance, gradient checkpointing."""

import pytest
import torch

from genomics.caduceus import (
    Caduceus,
    CaduceusConfig,
    CaduceusForMaskedLM,
    CaduceusForSequenceClassification,
    reverse_complement_ids,
)
from genomics.caduceus.blocks import RCPSMambaBlock, RMSNorm
from genomics.caduceus.loading import tied_aliases
from genomics.caduceus.rcps import rc_channels

PS_131K = "caduceus-ps_seqlen-131k_d_model-256_n_layer-16"
PH_131K = "caduceus-ph_seqlen-131k_d_model-256_n_layer-16"
MIXER_SHAPES = {  # one direction of one block, d_model 256 (spec / published checkpoints)
    "A_log": (512, 16), "D": (512,), "in_proj.weight": (1024, 256), "conv1d.weight": (512, 1, 4),
    "conv1d.bias": (512,), "x_proj.weight": (48, 512), "dt_proj.weight": (512, 16), "dt_proj.bias": (512,),
    "out_proj.weight": (256, 512),
}  # fmt: skip
REV_TIED = {"in_proj.weight", "out_proj.weight"}


def tiny(rcps=True, seed=0, **kw) -> CaduceusConfig:
    torch.manual_seed(seed)
    return CaduceusConfig(**(dict(d_model=16, n_layer=2, rcps=rcps, ssm_backend="torch") | kw))


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (no init symmetries such as D = 1 or zero biases to hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 1 else 0.0))
    return model.eval()


def random_ids(b=2, length=24, seed=1) -> torch.Tensor:
    return torch.randint(4, 12, (b, length), generator=torch.Generator().manual_seed(seed))  # pads, ACGT, N


def expected_published_keys(rcps: bool) -> dict:
    pre, keys = "caduceus.backbone.", {}
    if rcps:
        keys[pre + "embeddings.word_embeddings.embedding.weight"] = (16, 256)
        keys[pre + "embeddings.word_embeddings.complement_map"] = (16,)
        keys["lm_head.complement_map"] = (16,)
    else:
        keys[pre + "embeddings.word_embeddings.weight"] = (16, 256)
    for i in range(16):
        mixer = f"{pre}layers.{i}.mixer." + ("submodule." if rcps else "")
        for direction in ("mamba_fwd", "mamba_rev"):
            for name, shape in MIXER_SHAPES.items():
                if not (direction == "mamba_rev" and name in REV_TIED):
                    keys[f"{mixer}{direction}.{name}"] = shape
        keys[f"{pre}layers.{i}.norm.weight"] = (256,)
    keys[pre + "norm_f.weight"] = (256,)
    return keys


@pytest.mark.parametrize("name,rcps", [(PS_131K, True), (PH_131K, False)])
def test_published_131k_parameter_names_shapes_and_count(name, rcps, tmp_path):
    model = CaduceusForMaskedLM(CaduceusConfig.published(name))
    aliases = tied_aliases(model)
    stored = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in aliases}
    assert stored == expected_published_keys(rcps)
    head = "lm_head.lm_head.weight" if rcps else "lm_head.weight"
    assert set(aliases) == {head} | {
        f"caduceus.backbone.layers.{i}.mixer.{'submodule.' if rcps else ''}mamba_rev.{n}"
        for i in range(16)
        for n in REV_TIED
    }
    assert sum(p.numel() for p in model.parameters()) == 7_725_312
    if rcps:  # the published PS model.safetensors is exactly 30,937,760 bytes: same tensors, names and header
        model.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").stat().st_size == 30_937_760


def test_fused_add_norm_is_the_unfused_block_on_swapped_halves():
    cfg = tiny()
    fused = randomize(RCPSMambaBlock(16, _mixer(cfg), RMSNorm, fused_add_norm=True))
    unfused = RCPSMambaBlock(16, _mixer(cfg), RMSNorm, fused_add_norm=False)
    unfused.load_state_dict({k.replace("norm.", "norm.submodule."): v for k, v in fused.state_dict().items()})
    g = torch.Generator().manual_seed(3)
    h, r = torch.randn(2, 9, 32, generator=g), torch.randn(2, 9, 32, generator=g)
    swap = lambda x: torch.cat([x[..., 16:], x[..., :16]], -1)  # noqa: E731
    with torch.no_grad():
        for res in (None, r):
            out_f, res_f = fused(h, res)
            out_u, res_u = unfused(swap(h), None if res is None else swap(res))
            torch.testing.assert_close(out_f, out_u, rtol=0, atol=0)
            torch.testing.assert_close(res_f, res_u, rtol=0, atol=0)
        # upstream's fused kernel, written out: the SECOND half is the forward strand
        norm, mixer = fused.norm, fused.mixer
        res_fwd, res_rc = h[..., 16:] + r[..., 16:], rc_channels(h[..., :16] + r[..., :16])
        hidden = torch.cat([norm(res_fwd), rc_channels(norm(res_rc))], -1)
        torch.testing.assert_close(fused(h, r)[0], mixer(hidden))
        assert not torch.allclose(out_f, unfused(h, r)[0], atol=1e-3)  # the two paths really differ


def _mixer(cfg):
    from functools import partial

    from genomics.caduceus.bimamba import BiMambaWrapper

    return partial(BiMambaWrapper, **(cfg.ssm_cfg | {"backend": "torch"}))


@pytest.mark.parametrize(
    "kw",
    [
        dict(fused_add_norm=True),
        dict(fused_add_norm=False),
        dict(bidirectional_strategy="ew_multiply"),
        dict(residual_in_fp32=True, rms_norm=False),
        dict(bidirectional_weight_tie=False, n_layer=1),
    ],
)
def test_rcps_backbone_and_lm_logits_are_rc_equivariant(kw):
    cfg = tiny(**kw)
    model = randomize(CaduceusForMaskedLM(cfg))
    ids = random_ids()
    rc_ids = reverse_complement_ids(ids)
    cmap = torch.tensor([cfg.complement_map[i] for i in range(cfg.vocab_size)])
    with torch.no_grad():
        h, h_rc = model.caduceus(ids).last_hidden_state, model.caduceus(rc_ids).last_hidden_state  # (B, L, 2D)
        logits, logits_rc = model(ids).logits, model(rc_ids).logits  # (B, L, V)
    assert h.shape == (2, 24, 32) and logits.shape == (2, 24, 16)
    torch.testing.assert_close(h_rc, rc_channels(h), rtol=0, atol=1e-5)
    torch.testing.assert_close(logits_rc, logits.flip(1)[..., cmap], rtol=0, atol=1e-5)


def test_ph_model_shapes_and_weight_tie():
    model = CaduceusForMaskedLM(tiny(rcps=False))
    mixer = model.caduceus.backbone.layers[0].mixer
    assert mixer.mamba_rev.in_proj.weight is mixer.mamba_fwd.in_proj.weight
    assert mixer.mamba_rev.out_proj.weight is mixer.mamba_fwd.out_proj.weight
    assert mixer.mamba_rev.conv1d.weight is not mixer.mamba_fwd.conv1d.weight
    assert mixer.mamba_rev.x_proj.weight is not mixer.mamba_fwd.x_proj.weight
    assert model.lm_head.weight is model.caduceus.backbone.embeddings.word_embeddings.weight
    out = model(random_ids(), output_hidden_states=True)
    assert out.logits.shape == (2, 24, 16) and len(out.hidden_states) == 3


def test_masked_lm_loss_only_on_labelled_positions():
    model = randomize(CaduceusForMaskedLM(tiny()))
    ids = random_ids()
    labels = torch.full_like(ids, -100)
    labels[:, 5] = ids[:, 5]
    out = model(ids, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[:, 5], ids[:, 5])
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("rcps", [True, False])
def test_sequence_classification_is_rc_invariant(rcps):
    model = CaduceusForSequenceClassification(tiny(rcps=rcps), conjoin_eval=True, num_labels=3)
    randomize(model)
    ids = random_ids()
    with torch.no_grad():
        a, b = model(ids).logits, model(reverse_complement_ids(ids)).logits
    assert a.shape == (2, 3)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    model.train()
    loss = model(ids, labels=torch.tensor([0, 2])).loss
    loss.backward()
    assert model.score.weight.grad is not None


def _enable_checkpointing(model):
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def _saved_bytes(model, ids) -> tuple[int, dict]:
    """Bytes of activations kept for backward (autograd saved tensors, deduplicated), and the gradients."""
    seen, total = set(), [0]

    def pack(t):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total[0] += t.numel() * t.element_size()
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(ids, labels=ids).loss
    loss.backward()
    return total[0], {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("rcps", [True, False])
def test_gradient_checkpointing_equal_gradients_less_memory(rcps):
    assert CaduceusForMaskedLM.supports_gradient_checkpointing
    model = randomize(CaduceusForMaskedLM(tiny(rcps=rcps))).train()
    ids = random_ids(length=32)
    plain_bytes, plain_grads = _saved_bytes(model, ids)
    _enable_checkpointing(model)
    assert model.caduceus.backbone.gradient_checkpointing
    ckpt_bytes, ckpt_grads = _saved_bytes(model, ids)
    assert ckpt_bytes < plain_bytes / 3
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.gpu
def test_gradient_checkpointing_lowers_cuda_peak_memory():
    model = CaduceusForMaskedLM(tiny(d_model=128, n_layer=4, ssm_backend="auto")).cuda().train()
    ids = torch.randint(7, 11, (4, 4096), device="cuda")

    def peak():
        torch.cuda.reset_peak_memory_stats()
        model(ids, labels=ids).loss.backward()
        return torch.cuda.max_memory_allocated()

    before = peak()
    _enable_checkpointing(model)
    assert peak() < before


def test_backbone_forward_outputs():
    model = randomize(Caduceus(tiny()))
    out = model(random_ids(), output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 24, 32) and len(out.hidden_states) == 3
    assert model(random_ids(), return_dict=False)[0].shape == (2, 24, 32)
