"""BrainMT adapter: published keys and shapes, stem token grid, model_state_dict round trip, outputs, backends."""

import pytest
import torch

from brain.models import BrainMTEncoder
from brain.models.brainmt import BrainMT, stem_grid

TINY = dict(img_size=(24, 20, 20), num_frames=6, embed_dim=32, depth=(2, 2), stem_in_dim=4, stem_dim=8,
            drop_path_rate=0.0)  # fmt: skip


def test_published_keys_and_shapes():
    with torch.device("meta"):
        m = BrainMT()
    sd = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert len(sd) == 184 and sum(p.numel() for p in m.parameters()) == 39_104_961
    assert m.grid == stem_grid((109, 91, 91)) == (7, 6, 6)
    assert sd["pos_embed"] == (1, 253, 512) and sd["temporal_pos_embedding"] == (1, 200, 512)
    stem = {
        "cls_token": (1, 1, 512),
        "head.weight": (1, 512),
        "norm_f.weight": (512,),
        "patch_embed.conv_down.0.weight": (64, 1, 3, 3, 3),
        "patch_embed.conv_down.2.weight": (128, 64, 3, 3, 3),
        "downsample0.reduction.0.weight": (256, 128, 3, 3, 3),
        "downsample1.reduction.0.weight": (512, 256, 3, 3, 3),
        "conv_block1.norm2.weight": (256,),
        "conv_block0.conv1.bias": (128,),
    }
    assert {k: sd[k] for k in stem} == stem
    mixer = {
        "in_proj.weight": (2048, 512),
        "conv1d.weight": (1024, 1, 4),
        "conv1d.bias": (1024,),
        "x_proj.weight": (64, 1024),
        "dt_proj.weight": (1024, 32),
        "dt_proj.bias": (1024,),
        "A_log": (1024, 16),
        "D": (1024,),
        "out_proj.weight": (512, 1024),
    }
    for i in range(12):
        assert {k: sd[f"layers.{i}.mixer.{k}"] for k in mixer} == mixer and sd[f"layers.{i}.norm.weight"] == (512,)
    for i in range(8):
        assert sd[f"blocks.{i}.qkv.weight"] == (1536, 512) and sd[f"blocks.{i}.proj.bias"] == (512,)
    assert sd["mlp.fc1.weight"] == (1024, 512) and sd["mlp.fc2.weight"] == (512, 1024) and sd["norm.bias"] == (512,)
    assert not any(k.startswith(("blocks.0.norm", "blocks.0.mlp")) for k in sd)  # one shared norm and mlp


def test_stem_turns_a_published_frame_into_7x6x6_tokens():
    m = BrainMT(img_size=(109, 91, 91), embed_dim=32, stem_in_dim=4, stem_dim=8, depth=(1, 1), num_frames=1)
    with torch.no_grad():
        assert m.stem(torch.randn(1, 1, 109, 91, 91)).shape == (1, 32, 7, 6, 6)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_model_state_dict_round_trip(tmp_path, prefix):
    torch.manual_seed(0)
    src = BrainMT(**TINY, ssm_cfg={"backend": "torch"})
    ckpt = {
        "epoch": 3,
        "model_state_dict": {prefix + k: v for k, v in src.state_dict().items()},
        "optimizer_state_dict": {"state": {}, "param_groups": []},
        "best_val_loss": 0.5,
    }
    torch.save(ckpt, tmp_path / "bm.pth")
    enc = BrainMTEncoder(checkpoint=tmp_path / "bm.pth", backend="torch", **TINY).eval()
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in enc.backbone.state_dict().items())
    x = torch.randn(2, 2, 6, 1, 24, 20, 20)  # (B, W, T, 1, D, H, W)
    with torch.no_grad():
        out = enc(x)
        assert out.shape == (2, 32) and enc.output_dim == 32 and torch.equal(out, enc(x))
        ref = src.eval().forward_features(x.flatten(0, 1)).view(2, 2, 32).mean(1)
        assert torch.allclose(out, ref, atol=1e-5)
        short = enc(x[:, :, :4])  # fewer frames than num_frames: temporal embedding truncated
        assert short.shape == (2, 32)
        with pytest.raises(ValueError, match="frames"):
            enc(torch.randn(1, 1, 7, 1, 24, 20, 20))
    torch.save({"model_state_dict": {"bogus": torch.zeros(1)}}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="missing"):
        BrainMTEncoder(checkpoint=tmp_path / "bad.pth", **TINY)


def test_backends_agree_and_gradients_flow():
    torch.manual_seed(0)
    ref = BrainMTEncoder(backend="torch", **TINY).eval()
    auto = BrainMTEncoder(backend="auto", **TINY).eval()
    auto.load_state_dict(ref.state_dict())
    x = torch.randn(1, 1, 6, 1, 24, 20, 20)
    with torch.no_grad():
        assert torch.allclose(ref(x), auto(x), atol=1e-4)
    ref.train()(x).sum().backward()
    assert ref.backbone.layers[0].mixer.A_log.grad is not None and ref.backbone.cls_token.grad is not None
