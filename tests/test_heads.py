"""ProjectionHead options for small cohorts: the linear head, feature noise and feature dropout (training only)."""

from __future__ import annotations

import pytest
import torch

from fusion.heads import ProjectionHead


def test_linear_head_is_one_linear_map_and_layer_norm():
    head = ProjectionHead(in_dim=40, hidden_dim=None, out_dim=16, input_norm=True)
    assert sum(p.numel() for p in head.parameters()) == 40 * 16 + 16 + 2 * 16  # Linear + LayerNorm (BN: no affine)
    assert head(torch.randn(5, 40)).shape == (5, 16) and head.output_dim == 16
    mlp = ProjectionHead(in_dim=40, hidden_dim=8, out_dim=16)
    assert sum(p.numel() for p in mlp.parameters()) == 40 * 8 + 8 + 8 * 16 + 16 + 2 * 16


@pytest.mark.parametrize("option", [{"input_noise": 0.5}, {"input_dropout": 0.5}])
def test_feature_noise_and_dropout_act_only_while_training(option):
    torch.manual_seed(0)
    head = ProjectionHead(in_dim=32, hidden_dim=None, out_dim=8, dropout=0.0, **option)
    plain = ProjectionHead(in_dim=32, hidden_dim=None, out_dim=8, dropout=0.0)
    plain.load_state_dict(head.state_dict())
    x = torch.randn(6, 32)
    head.train(), plain.train()
    assert not torch.allclose(head(x), plain(x))  # perturbed inputs while training
    assert not torch.allclose(head(x), head(x))  # fresh noise / masks each call
    head.eval(), plain.eval()
    assert torch.equal(head(x), plain(x))  # the identity at evaluation


def test_negative_noise_is_refused():
    with pytest.raises(ValueError, match="input_noise"):
        ProjectionHead(in_dim=4, input_noise=-0.1)
