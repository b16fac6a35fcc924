"""Caduceus blocks: pre-norm residual blocks around a BiMambaWrapper, plain (Caduceus-Ph) and RCPS (Caduceus-PS).

The plain block is genomics.ssm.block.MambaBlock (shared with BrainMT); the RCPS block is defined here.

References: state-spaces/mamba `mamba_ssm/modules/block.py` (Add -> Norm -> Mixer ordering, RMSNorm);
kuleshov-group/caduceus `caduceus/modeling_rcps.py` (`RCPSMambaBlock`) and `modeling_caduceus.py` (`create_block`).

Each block returns (hidden, residual) and leaves the residual add to the next block (or the final norm):
    residual = hidden + residual          (hidden at layer 0)
    hidden   = mixer(norm(residual))
No MLP, no dropout, no positional encoding.

Fused add-norm half swap (RCPSMambaBlock with fused_add_norm=True, as the published PS checkpoints were trained):
upstream's Triton path normalises the SECOND half of (hidden + residual) as the forward strand and the first half,
reverse-complemented, as the RC strand, so the block equals the unfused block applied to swap_halves(hidden) and
swap_halves(residual). Swapping halves commutes with rc(), so equivariance holds either way, but the outputs differ;
we reproduce the fused semantics in plain PyTorch for checkpoint parity. Parameter names differ too: `norm.weight`
(fused) versus `norm.submodule.weight` (unfused).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from genomics.caduceus.bimamba import BiMambaWrapper
from genomics.caduceus.rcps import RCPSAddNormWrapper, RCPSWrapper, rcps_add_norm, swap_halves
from genomics.ssm.block import MambaBlock


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight, computed in float32, no bias (mamba_ssm's RMSNorm)."""

    def __init__(self, d: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))  # (D,)

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()  # (..., D)
        out = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps) * self.weight.float()
        return out.to(x.dtype)  # (..., D)


class RCPSMambaBlock(nn.Module):
    """Caduceus-PS block: RCPS add-norm, then RCPSWrapper(BiMambaWrapper); (B, L, 2D) hidden and residual."""

    def __init__(self, d_model: int, mixer_cls, norm_cls, fused_add_norm: bool = True, residual_in_fp32=False):
        super().__init__()
        self.fused_add_norm, self.residual_in_fp32 = fused_add_norm, residual_in_fp32
        self.mixer = RCPSWrapper(mixer_cls(d_model))
        self.norm = norm_cls(d_model) if fused_add_norm else RCPSAddNormWrapper(norm_cls(d_model))

    def forward(self, hidden_states: Tensor, residual: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.fused_add_norm:  # published PS semantics: halves swapped (see module docstring)
            res_in = None if residual is None else swap_halves(residual)  # (B, L, 2D)
            hidden_states, residual = rcps_add_norm(
                self.norm, swap_halves(hidden_states), res_in, self.residual_in_fp32
            )  # (B, L, 2D) each
        else:
            hidden_states, residual = self.norm(
                hidden_states, residual, prenorm=True, residual_in_fp32=self.residual_in_fp32
            )  # (B, L, 2D) each
        return self.mixer(hidden_states), residual  # (B, L, 2D) each


def norm_class(config):
    """RMSNorm or LayerNorm of the config's width-agnostic kind, as a constructor of d."""
    return partial(RMSNorm if config.rms_norm else nn.LayerNorm, eps=config.norm_epsilon)


def create_block(config) -> nn.Module:
    """One Caduceus block for a CaduceusConfig (RCPS or plain)."""
    ssm_cfg = dict(config.ssm_cfg or {}) | {"backend": config.ssm_backend}
    mixer_cls = partial(
        BiMambaWrapper,
        bidirectional=config.bidirectional,
        bidirectional_strategy=config.bidirectional_strategy,
        bidirectional_weight_tie=config.bidirectional_weight_tie,
        **ssm_cfg,
    )
    if config.rcps:
        return RCPSMambaBlock(
            config.d_model, mixer_cls, norm_class(config), config.fused_add_norm, config.residual_in_fp32
        )
    return MambaBlock(config.d_model, mixer_cls, norm_class(config), config.residual_in_fp32)  # Caduceus-Ph
