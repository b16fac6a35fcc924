"""MambaBlock: the pre-norm residual block around a mixer, shared by Caduceus-Ph (genomics) and BrainMT (brain).

References: state-spaces/mamba `mamba_ssm/modules/mamba_simple.py` (`Block`: Add -> Norm -> Mixer, no MLP, the
unfused path); hustvl/Vim `models_mamba.py` (the same block with drop path on the incoming hidden state), which
BrainMT's `Block` copies. Parameter names as upstream: `mixer.*`, `norm.*` (registered in that order).

Each block returns (hidden, residual) and leaves the last residual add to the next block (or the final norm):
    residual = hidden                          (first block: residual is None)
    residual = residual + drop_path(hidden)    (otherwise; drop_path is the identity when not given)
    residual = residual.float()                (residual_in_fp32)
    hidden   = mixer(norm(residual.to(norm.weight.dtype)))
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn


class MambaBlock(nn.Module):
    """(B, L, D) hidden and residual in, (B, L, D) hidden and residual out (see module docstring)."""

    def __init__(
        self,
        d_model: int,
        mixer_cls: Callable[[int], nn.Module],  # d_model -> mixer, e.g. partial(Mamba, layer_idx=i, ...)
        norm_cls: Callable[[int], nn.Module],  # d_model -> norm with a `weight`, e.g. partial(nn.RMSNorm, eps=1e-5)
        residual_in_fp32: bool = False,
        drop_path: nn.Module | None = None,  # stochastic depth on the incoming hidden state (BrainMT); None = off
    ):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.mixer = mixer_cls(d_model)
        self.norm = norm_cls(d_model)
        self.drop_path = drop_path

    def forward(self, hidden_states: Tensor, residual: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if residual is None:
            residual = hidden_states  # (B, L, D)
        else:
            residual = residual + (hidden_states if self.drop_path is None else self.drop_path(hidden_states))
        if self.residual_in_fp32:
            residual = residual.float()
        hidden_states = self.norm(residual.to(self.norm.weight.dtype))  # (B, L, D)
        return self.mixer(hidden_states), residual  # (B, L, D) each
