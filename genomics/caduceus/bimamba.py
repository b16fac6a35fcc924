"""BiMambaWrapper: bidirectional Mamba, one forward and one reversed Mamba-1 mixer combined per position.

References: Schiff et al. 2024 (Caduceus, Sec. 3.1 "BiMamba"); kuleshov-group/caduceus `caduceus/modeling_caduceus.py`
(names `mamba_fwd`, `mamba_rev`; only in_proj and out_proj are tied between the two directions).

    out = mamba_fwd(x) (+ or *) flip_L(mamba_rev(flip_L(x)))        (B, L, D) -> (B, L, D)
With weight tying the reversed mixer shares in_proj and out_proj (most of the parameters) and keeps its own conv1d,
x_proj, dt_proj, A_log and D. Tied parameters are the same nn.Parameter objects, so state_dict() lists them under both
names; checkpoints store them once (under mamba_fwd), see loading.py.
"""

from __future__ import annotations

from torch import Tensor, nn

from genomics.ssm.mamba import Mamba


class BiMambaWrapper(nn.Module):
    def __init__(
        self,
        d_model: int,
        bidirectional: bool = True,
        bidirectional_strategy: str | None = "add",  # "add" | "ew_multiply"
        bidirectional_weight_tie: bool = True,
        **mamba_kwargs,  # Mamba(d_state, d_conv, expand, dt_*, conv_bias, bias, backend, ...)
    ):
        super().__init__()
        strategy = bidirectional_strategy or "add"
        if bidirectional and strategy not in ("add", "ew_multiply"):
            raise ValueError(f"bidirectional_strategy must be 'add' or 'ew_multiply', got {strategy!r}")
        self.bidirectional, self.bidirectional_strategy = bidirectional, strategy
        self.bidirectional_weight_tie = bidirectional and bidirectional_weight_tie
        self.mamba_fwd = Mamba(d_model, **mamba_kwargs)
        self.mamba_rev = Mamba(d_model, **mamba_kwargs) if bidirectional else None
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share in_proj and out_proj (weight and bias) of mamba_rev with mamba_fwd; idempotent."""
        if not self.bidirectional_weight_tie:
            return
        for name in ("in_proj", "out_proj"):
            fwd, rev = getattr(self.mamba_fwd, name), getattr(self.mamba_rev, name)
            rev.weight = fwd.weight
            rev.bias = fwd.bias

    def forward(self, hidden_states: Tensor) -> Tensor:
        out = self.mamba_fwd(hidden_states)  # (B, L, D)
        if not self.bidirectional:
            return out
        out_rev = self.mamba_rev(hidden_states.flip(1)).flip(1)  # (B, L, D), reversed scan aligned back
        return out + out_rev if self.bidirectional_strategy == "add" else out * out_rev  # (B, L, D)
