"""Caduceus fused inference path (CaduceusMixerModel._fused_forward on the CPU kernel) against the module-by-module
composition it replaces: outputs (PS and Ph, fused and unfused add-norm, both bidirectional strategies, batches that
do and do not fit one tile, bf16), RC equivariance, and gradients in training mode (which keep the composition)."""

import pytest
import torch

from genomics.caduceus import Caduceus, CaduceusConfig, CaduceusForMaskedLM, reverse_complement_ids
from genomics.caduceus.embedding import CaduceusEmbedder
from genomics.caduceus.rcps import rc_channels
from genomics.ssm import cpu_kernel, ops

pytestmark = pytest.mark.skipif(ops._cpu_ops() is None, reason="fused CPU kernel not available")


@pytest.fixture(autouse=True)
def _small_tiles(monkeypatch):
    """Tiles of 16 rows: sequences of 40 cross several tiles in both scan directions; batches of short sequences
    are grouped (16 // 5 = 3 sequences of 5 per group)."""
    monkeypatch.setattr(cpu_kernel, "FWD_TILE", 16)


def _model(rcps=True, seed=0, cls=Caduceus, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = CaduceusConfig(**(dict(d_model=16, n_layer=3, rcps=rcps, ssm_backend="cpu") | kw))
    model = cls(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # random weights everywhere (no init symmetry such as D = 1 hides a bug)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 1 else 0.0))
    return model.eval()


def _ids(b, length, seed=1):
    return torch.randint(4, 12, (b, length), generator=torch.Generator().manual_seed(seed))


def _both(model, ids, **kw):
    """(fused, composition) last hidden states of the same model."""
    backbone = model.backbone if hasattr(model, "backbone") else model.caduceus.backbone
    with torch.inference_mode():
        assert backbone._can_fuse(None)
        fused = model(ids, **kw).last_hidden_state
        backbone.fused_inference = False
        ref = model(ids, **kw).last_hidden_state
        backbone.fused_inference = True
    return fused, ref


def _rel(a, b) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


CASES = [
    dict(rcps=True),
    dict(rcps=True, fused_add_norm=False),
    dict(rcps=True, bidirectional_strategy="ew_multiply"),
    dict(rcps=True, rms_norm=False),
    dict(rcps=True, residual_in_fp32=True),
    dict(rcps=True, bidirectional=False),
    dict(rcps=False),
    dict(rcps=False, bidirectional_strategy="ew_multiply", rms_norm=False),
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("shape", [(1, 40), (7, 5)], ids=["long", "grouped"])
def test_fused_equals_composition(kw, shape):
    """Within 1e-5 of the composition, or (random weights in multiplicative configs amplify float32 rounding) within
    twice the composition's own distance from the float64 computation."""
    model = _model(**kw)
    ids = _ids(*shape)
    fused, ref = _both(model, ids)
    assert fused.shape == ref.shape
    tol = 1e-5
    if _rel(fused, ref) > tol:
        exact = _model(**kw).double()
        exact.backbone.fused_inference = False
        with torch.inference_mode():
            tol = max(tol, 2 * _rel(ref, exact(ids).last_hidden_state))
    assert _rel(fused, ref) <= tol


@pytest.mark.parametrize("combine", [True, False])
def test_out_proj_per_direction_equals_combined(combine):
    model = _model()
    model.backbone.fused_combine_out_proj = combine
    fused, ref = _both(model, _ids(2, 40))
    assert _rel(fused, ref) <= 1e-5


def test_fused_with_projection_biases():
    model = _model(ssm_cfg=dict(bias=True, d_state=4, expand=2))
    fused, ref = _both(model, _ids(2, 40))
    assert _rel(fused, ref) <= 1e-5


def test_fused_bf16_close_to_composition():
    model = _model().to(torch.bfloat16)
    fused, ref = _both(model, _ids(2, 40))
    assert fused.dtype == torch.bfloat16
    assert _rel(fused, ref) <= 5e-2


def test_fused_inputs_embeds_not_overwritten():
    model = _model()
    emb = model.get_input_embeddings()(_ids(2, 40))
    before = emb.clone()
    with torch.inference_mode():
        out = model(inputs_embeds=emb).last_hidden_state
        model.backbone.fused_inference = False
        ref = model(inputs_embeds=emb).last_hidden_state
    assert torch.equal(emb, before)
    assert _rel(out, ref) <= 1e-5


@pytest.mark.parametrize("kw", [dict(), dict(fused_add_norm=False)])
def test_fused_rcps_equivariance(kw):
    model = _model(**kw)
    ids = _ids(2, 40)
    with torch.inference_mode():
        h, h_rc = model(ids).last_hidden_state, model(reverse_complement_ids(ids)).last_hidden_state
    # to float32 rounding (the composition is bitwise equivariant; here the flips are folded into weights and
    # indexing, so the two strands sum the same products in different orders)
    assert _rel(h_rc, rc_channels(h)) <= 1e-5


def test_conjoined_ph_embedder_equals_two_passes():
    model = _model(rcps=False)
    emb = CaduceusEmbedder(model, conjoin=True)
    ids = _ids(3, 40)
    with torch.inference_mode():
        both = emb(ids)
        model.backbone.fused_inference = False
        ref = torch.stack([model(ids).last_hidden_state, model(reverse_complement_ids(ids)).last_hidden_state], dim=-1)
    assert _rel(both, ref) <= 1e-5


def test_hidden_states_and_grad_use_the_composition():
    model = _model()
    assert not model.backbone._can_fuse(None)  # parameters require grad and grad mode is on
    with torch.no_grad():
        assert model.backbone._can_fuse(None)
    model.backbone.fused_inference = False
    with torch.no_grad():
        assert not model.backbone._can_fuse(None)


@pytest.mark.parametrize("rcps", [True, False])
def test_training_gradients_match_the_reference_backend(rcps):
    """Training mode on the CPU kernel (composition path) against the pure-PyTorch reference backend."""
    model = _model(rcps=rcps, cls=CaduceusForMaskedLM).train()
    ref = _model(rcps=rcps, cls=CaduceusForMaskedLM).train()
    ref.set_ssm_backend("torch")
    ids = _ids(2, 40)
    grads = []
    for m in (model, ref):
        m.zero_grad(set_to_none=True)
        m(ids, labels=ids).loss.backward()
        grads.append({k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for k, g in grads[1].items():
        scale = g.abs().max().item()
        assert (grads[0][k] - g).abs().max().item() <= 1e-4 * scale + 1e-6, k


def test_fused_follows_weight_updates_and_grad_modes():
    """The kernels' per-direction constants are cached on the module: an in-place weight update must reach them;
    constants built under inference_mode serve a later no_grad call."""
    model = _model()
    ids = _ids(2, 40)
    with torch.inference_mode():
        model(ids)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.01)
        fused = model(ids).last_hidden_state
        model.backbone.fused_inference = False
        ref = model(ids).last_hidden_state
    assert _rel(fused, ref) <= 1e-5
