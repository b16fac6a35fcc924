"""SwiFT adapter: released-size keys and shapes, Lightning .ckpt round trip, safe loading, outputs, determinism."""

import argparse

import pytest
import torch
from lightning.fabric.utilities.data import AttributeDict

from brain.models import SwiFTEncoder
from brain.models.swift import SwinTransformer4D, save_lightning_ckpt

RELEASED = dict(img_size=(96, 96, 96, 20), embed_dim=36, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                window_size=(4, 4, 4, 4), first_window_size=(4, 4, 4, 4), patch_size=(6, 6, 6, 1))  # fmt: skip
TINY = dict(img_size=(16, 16, 16, 6), embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
            window_size=(4, 4, 4, 4), first_window_size=(2, 2, 2, 2), patch_size=(2, 2, 2, 1))  # fmt: skip


def expected_swift_keys() -> dict[str, tuple]:
    keys = {
        "patch_embed.fc.weight": (36, 216),
        "patch_embed.fc.bias": (36,),
        "norm.weight": (288,),
        "norm.bias": (288,),
    }
    dims, grids = (36, 72, 144, 288), (16, 8, 4, 2)
    for i, (c, g) in enumerate(zip(dims, grids)):
        keys[f"pos_embeds.{i}.pos_embed"] = (1, c, g, g, g, 1)
        keys[f"pos_embeds.{i}.time_embed"] = (1, c, 1, 1, 1, 20)
        for j in range((2, 2, 6, 2)[i]):
            b = f"layers.{i}.blocks.{j}."
            block = {"norm1.weight": (c,), "norm1.bias": (c,), "attn.qkv.weight": (3 * c, c),
                     "attn.qkv.bias": (3 * c,), "attn.proj.weight": (c, c), "attn.proj.bias": (c,),
                     "norm2.weight": (c,), "norm2.bias": (c,), "mlp.linear1.weight": (4 * c, c),
                     "mlp.linear1.bias": (4 * c,), "mlp.linear2.weight": (c, 4 * c),
                     "mlp.linear2.bias": (c,)}  # fmt: skip
            keys |= {b + k: v for k, v in block.items()}
        if i < 3:
            d = f"layers.{i}.downsample."
            keys |= {d + "reduction.weight": (2 * c, 8 * c), d + "norm.weight": (8 * c,), d + "norm.bias": (8 * c,)}
    return keys


def test_released_keys_shapes_and_output():
    torch.manual_seed(0)
    m = SwinTransformer4D(**RELEASED).eval()
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected_swift_keys()
    assert len(m.state_dict()) == 165 and sum(p.numel() for p in m.parameters()) == 4_315_212
    with torch.no_grad():
        out = m(torch.randn(1, 1, 96, 96, 96, 20))
    assert out.shape == (1, 288, 2, 2, 2, 20)


@pytest.mark.parametrize("hparams", ["attributedict", "namespace", "none"])
def test_lightning_ckpt_round_trip(tmp_path, hparams):
    torch.manual_seed(0)
    src = SwinTransformer4D(**TINY)
    hp = {"img_size": [16, 16, 16, 6], "embed_dim": 8, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4],
          "window_size": [4, 4, 4, 4], "first_window_size": [2, 2, 2, 2], "patch_size": [2, 2, 2, 1],
          "learning_rate": 5e-5, "downstream_task": "sex"}  # fmt: skip
    hp = {"attributedict": AttributeDict(hp), "namespace": argparse.Namespace(**hp), "none": None}[hparams]
    head = {"head.weight": torch.randn(1, 64), "head.bias": torch.zeros(1)}  # output_head.* is ignored
    save_lightning_ckpt(src, tmp_path / "swift.ckpt", hyper_parameters=hp, output_head=head)
    arch = {} if hparams != "none" else TINY  # the checkpoint's hyper_parameters give the architecture
    enc = SwiFTEncoder(checkpoint=tmp_path / "swift.ckpt", **arch).eval()
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in enc.backbone.state_dict().items())
    x = torch.randn(2, 3, 1, 16, 16, 16, 6)  # (B, W, 1, X, Y, Z, T)
    with torch.no_grad():
        out = enc(x)
        assert out.shape == (2, 64) and enc.output_dim == 64 and torch.equal(out, enc(x))
        ref = src.eval()(x.flatten(0, 1)).flatten(2).mean(-1).view(2, 3, 64).mean(1)  # mean over tokens, windows
        assert torch.allclose(out, ref, atol=1e-6)


def test_checkpoint_safety_and_mismatch(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload()}}, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match="weights-only"):
        SwiFTEncoder(checkpoint=tmp_path / "evil.ckpt", **TINY)
    save_lightning_ckpt(SwinTransformer4D(**{**TINY, "embed_dim": 12, "num_heads": (1, 2, 2, 4)}), tmp_path / "w.ckpt")
    with pytest.raises(ValueError, match="shape mismatch"):
        SwiFTEncoder(checkpoint=tmp_path / "w.ckpt", **TINY)
    with pytest.raises(ValueError, match="expects volumes"):
        SwiFTEncoder(**TINY)(torch.randn(1, 1, 1, 16, 16, 12, 6))


def test_frozen_encoder_no_grad():
    enc = SwiFTEncoder(freeze=True, **TINY)
    enc.train()
    assert not enc.backbone.training and not any(p.requires_grad for p in enc.parameters())
    out = enc(torch.randn(1, 1, 1, 16, 16, 16, 6))
    assert not out.requires_grad
    tuned = SwiFTEncoder(**TINY, drop_path_rate=0.1).train()
    tuned(torch.randn(2, 1, 1, 16, 16, 16, 6)).sum().backward()
    assert tuned.backbone.patch_embed.fc.weight.grad is not None
