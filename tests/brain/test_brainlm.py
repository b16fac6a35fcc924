"""BrainLM adapters: upstream key names/shapes at published size, Hugging Face round trips, outputs, determinism."""

import json
import re

import pytest
import torch
from transformers import ViTMAEConfig

from brain.models import BrainLMMAEEncoder, BrainLMViTMAEEncoder
from brain.models.brainlm_mae import BrainLMConfig, BrainLMForPretraining
from brain.models.brainlm_vitmae import PRESETS, build_backbone, save_pretrained, to_transformers4_names

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, decoder_hidden_size=32,
            decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=64)  # fmt: skip

# BrainLMForPretraining at the repo checkpoint's config (instantiated upstream on CPU): 5,047,724 parameters,
# encoder vit.* 3,167,248, plus the two persistent sinusoidal buffers
NYSTROM_LAYER = {
    "attention.self.query.weight": (256, 256), "attention.self.query.bias": (256,),
    "attention.self.key.weight": (256, 256), "attention.self.key.bias": (256,),
    "attention.self.value.weight": (256, 256), "attention.self.value.bias": (256,),
    "attention.self.conv.weight": (4, 1, 65, 1),
    "attention.output.dense.weight": (256, 256), "attention.output.dense.bias": (256,),
    "attention.output.LayerNorm.weight": (256,), "attention.output.LayerNorm.bias": (256,),
    "intermediate.dense.weight": (1024, 256), "intermediate.dense.bias": (1024,),
    "output.dense.weight": (256, 1024), "output.dense.bias": (256,),
    "output.LayerNorm.weight": (256,), "output.LayerNorm.bias": (256,),
}  # fmt: skip
BRAINLM_OTHER = {
    "vit.embeddings.cls_token": (1, 1, 256),
    "vit.embeddings.signal_embedding_projection.weight": (256, 20),
    "vit.embeddings.signal_embedding_projection.bias": (256,),
    "vit.embeddings.xyz_embedding_projection.weight": (256, 3),
    "vit.embeddings.xyz_embedding_projection.bias": (256,),
    "vit.embeddings.pos_embedding.pe": (5000, 256),
    "vit.layernorm.weight": (256,), "vit.layernorm.bias": (256,),
    "decoder.mask_token": (1, 1, 256),
    "decoder.decoder_embed.weight": (256, 256), "decoder.decoder_embed.bias": (256,),
    "decoder.decoder_norm.weight": (256,), "decoder.decoder_norm.bias": (256,),
    "decoder.decoder_pred.weight": (768, 256), "decoder.decoder_pred.bias": (768,),
    "decoder.decoder_xyz_projection.weight": (256, 3), "decoder.decoder_xyz_projection.bias": (256,),
    "decoder.pos_embedding.pe": (5000, 256),
    "decoder.decoder_pred1.weight": (128, 256), "decoder.decoder_pred1.bias": (128,),
    "decoder.decoder_pred2.weight": (20, 128), "decoder.decoder_pred2.bias": (20,),
}  # fmt: skip


def test_brainlm_mae_keys_and_shapes_at_published_size():
    with torch.device("meta"):
        m = BrainLMForPretraining(BrainLMConfig())
    expected = dict(BRAINLM_OTHER)
    for prefix, n in (("vit.encoder.layer", 4), ("decoder.decoder_layers", 2)):
        expected |= {f"{prefix}.{i}.{k}": v for i in range(n) for k, v in NYSTROM_LAYER.items()}
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected
    assert sum(p.numel() for p in m.parameters()) == 5_047_724
    assert sum(p.numel() for p in m.vit.parameters()) == 3_167_248


def v4_layer_keys(prefix: str) -> set[str]:
    names = ["attention.attention.query", "attention.attention.key", "attention.attention.value",
             "attention.output.dense", "intermediate.dense", "output.dense",
             "layernorm_before", "layernorm_after"]  # fmt: skip
    return {f"{prefix}.{n}.{p}" for n in names for p in ("weight", "bias")}


def test_vitmae_111m_keys_in_transformers4_layout():
    with torch.device("meta"):
        m = build_backbone(ViTMAEConfig(**PRESETS["111m"]), decoder=True)
    assert sum(p.numel() for p in m.parameters()) == 112_590_080
    assert sum(p.numel() for p in m.vit.parameters()) == 86_208_000
    v4 = {k: tuple(v.shape) for k, v in to_transformers4_names(m.state_dict()).items()}
    expected = {"vit.embeddings.cls_token", "vit.embeddings.position_embeddings", "vit.layernorm.weight",
                "vit.layernorm.bias", "vit.embeddings.patch_embeddings.projection.weight",
                "vit.embeddings.patch_embeddings.projection.bias", "decoder.mask_token", "decoder.decoder_pos_embed",
                "decoder.decoder_embed.weight", "decoder.decoder_embed.bias", "decoder.decoder_norm.weight",
                "decoder.decoder_norm.bias", "decoder.decoder_pred.weight", "decoder.decoder_pred.bias"}  # fmt: skip
    for i in range(12):
        expected |= v4_layer_keys(f"vit.encoder.layer.{i}")
    for i in range(8):
        expected |= v4_layer_keys(f"decoder.decoder_layers.{i}")
    assert set(v4) == expected and len(v4) == 334
    assert v4["vit.embeddings.position_embeddings"] == (1, 730, 768)  # 27 x 27 patches of the 432 image + CLS
    assert v4["vit.encoder.layer.0.attention.attention.query.weight"] == (768, 768)
    assert v4["decoder.decoder_pred.weight"] == (768, 512)


@pytest.mark.parametrize("safe", [True, False])
def test_brainlm_mae_round_trip_hf_folder(tmp_path, atlas_files, safe):
    _, coords = atlas_files
    torch.manual_seed(0)
    src = BrainLMForPretraining(BrainLMConfig(**TINY), decoder=True)
    src.save_pretrained(tmp_path / "ckpt", safe_serialization=safe)
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["model_type"] == "brainlm_mae" and cfg["hidden_size"] == 32
    enc = BrainLMMAEEncoder(coords, checkpoint=tmp_path / "ckpt", decoder=True).eval()
    ref = src.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in enc.backbone.state_dict().items())
    enc_no_dec = BrainLMMAEEncoder(coords, checkpoint=tmp_path / "ckpt").eval()  # decoder.* dropped
    x = torch.randn(2, 3, 40, 12)  # (B, W, T, P)
    with torch.no_grad():
        out = enc(x)
        assert out.shape == (2, 32) and enc.output_dim == 32
        assert torch.equal(out, enc(x)) and torch.allclose(out, enc_no_dec(x))  # deterministic, decoder irrelevant
        per_window = torch.stack([enc(x[:, w]) for w in range(3)], 1).mean(1)
        assert torch.allclose(out, per_window, atol=1e-5)  # window averaging
        loss, pred, mask = enc.backbone(x[:, 0].transpose(1, 2), enc.xyz.expand(2, -1, -1), mask_ratio=0.5)
    assert pred.shape == (2, 12, 2, 20) and mask.shape == (2, 12, 2) and loss.item() > 0


def test_brainlm_mae_errors(tmp_path, atlas_files):
    _, coords = atlas_files
    enc = BrainLMMAEEncoder(coords, **TINY)
    with pytest.raises(ValueError, match="parcels"):
        enc(torch.randn(1, 1, 40, 7))
    with pytest.raises(ValueError, match="multiple"):
        enc(torch.randn(1, 1, 30, 12))
    with pytest.raises(FileNotFoundError, match="config.json"):
        BrainLMMAEEncoder(coords, checkpoint=tmp_path)
    BrainLMForPretraining(BrainLMConfig(**{**TINY, "hidden_size": 64})).save_pretrained(tmp_path / "big")
    cfg = json.loads((tmp_path / "big" / "config.json").read_text())
    cfg["num_hidden_layers"] = 1  # weights for 2 layers, config says 1
    (tmp_path / "big" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unexpected"):
        BrainLMMAEEncoder(coords, checkpoint=tmp_path / "big")


@pytest.mark.parametrize("v4_names", [True, False])
def test_vitmae_round_trip_and_image(tmp_path, atlas_files, synth, v4_names):
    _, coords = atlas_files
    torch.manual_seed(0)
    enc = BrainLMViTMAEEncoder(coords, size="tiny", num_timepoints=40, decoder=True).eval()
    assert enc.image_size == (48, 48)  # smallest multiple of 16 holding 12 parcels x 40 frames
    save_pretrained(enc.backbone, tmp_path / "vit", transformers4_names=v4_names, safe=not v4_names)
    names = (tmp_path / "vit").iterdir()
    assert any(p.name == ("pytorch_model.bin" if v4_names else "model.safetensors") for p in names)
    if v4_names:
        state = torch.load(tmp_path / "vit" / "pytorch_model.bin", weights_only=True)
        assert "vit.encoder.layer.0.attention.attention.query.weight" in state
    back = BrainLMViTMAEEncoder(coords, checkpoint=tmp_path / "vit").eval()
    x = torch.randn(2, 2, 40, 12)
    with torch.no_grad():
        out = back(x)
        assert out.shape == (2, 32) and torch.allclose(out, enc(x), atol=1e-6) and torch.equal(out, back(x))
    img = back.image(x[:, 0])
    assert img.shape == (2, 3, 48, 48) and (img[:, :, :18] == -1).all() and (img[:, :, :, 44:] == -1).all()
    y_order = synth.CENTRES[:, 1].argsort(kind="stable")
    rows = x[:, 0].transpose(1, 2)[:, torch.from_numpy(y_order)] / 5.6430855  # ascending Y, scaled
    assert torch.allclose(img[:, 1, 18:30, 4:44], rows)


def test_vitmae_v4_names_regex():
    sd = {"vit.layers.3.attention.o_proj.weight": 0, "decoder.decoder_layers.0.mlp.fc2.bias": 0}
    v4 = to_transformers4_names(sd)
    assert set(v4) == {
        "vit.encoder.layer.3.attention.output.dense.weight",
        "decoder.decoder_layers.0.output.dense.bias",
    }
    assert all(re.search(r"(q_proj|mlp)", k) is None for k in v4)


def test_fused_exact_attention_equals_transformers_nystromformer():
    from transformers.models.nystromformer.modeling_nystromformer import NystromformerSelfAttention

    from brain.models.brainlm_mae import ExactSoftmaxAttention

    torch.manual_seed(0)
    model = BrainLMForPretraining(BrainLMConfig(**TINY), decoder=True).eval()  # eval: dropout off
    signal, xyz = torch.randn(2, 12, 100), torch.randn(2, 12, 3)  # (B, P, T): 12 parcels x 5 patches
    noise = torch.rand(2, 60)

    def run():
        model.zero_grad()
        loss, pred, _ = model(signal, xyz, mask_ratio=0.75, noise=noise)
        loss.backward()
        return loss.detach(), pred.detach(), model.vit.encoder.layer[0].attention.self.query.weight.grad.clone()

    fused = run()
    attentions = [m for m in model.modules() if isinstance(m, ExactSoftmaxAttention)]
    assert len(attentions) == 3  # two encoder layers and the decoder's
    for m in attentions:
        m.__class__ = NystromformerSelfAttention  # transformers' own forward (the explicit softmax)
    for a, b in zip(fused, run()):  # loss, predictions (B, P, N, 20), a gradient
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
