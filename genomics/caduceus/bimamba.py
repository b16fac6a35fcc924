"""BiMambaWrapper: bidirectional Mamba, one forward and one reversed Mamba-1 mixer combined per position.

References: Schiff et al. 2024 (Caduceus, Sec. 3.1 "BiMamba"); kuleshov-group/caduceus `caduceus/modeling_caduceus.py`
(names `mamba_fwd`, `mamba_rev`; only in_proj and out_proj are tied between the two directions).

    out = mamba_fwd(x) (+ or *) flip_L(mamba_rev(flip_L(x)))        (B, L, D) -> (B, L, D)
With weight tying the reversed mixer shares in_proj and out_proj (most of the parameters) and keeps its own conv1d,
x_proj, dt_proj, A_log and D. Tied parameters are the same nn.Parameter objects, so state_dict() lists them under both
names; checkpoints store them once (under mamba_fwd), see loading.py.

Inference on the fused CPU kernel (`forward_into`, used by CaduceusMixerModel's fused path): with tied projections
the two directions share in_proj(h) (position-wise, so in_proj(flip_L h) = flip_L in_proj(h)) and, with "add", one
out_proj of the summed gated scan outputs; the reversed mixer's conv and scan run backwards over the same xz
(genomics.ssm.cpu_kernel.bimamba_cpu), so nothing is flipped or copied. The RC strand of an RCPS block,
rc(self(rc(h))) with rc = flip_L flip_C, is the same call with the channel flips folded into the weights (in_proj's
columns, out_proj's rows) and the directions' roles exchanged: flip_C[mamba_rev(h') + flip_L mamba_fwd(flip_L h')],
h' = flip_C h.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genomics.ssm import ops
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

    def fused_inference_ok(self) -> bool:
        """Whether forward_into can run: both mixers on the CPU kernel, in/out projections shared (or one mixer)."""
        mixers = [m for m in (self.mamba_fwd, self.mamba_rev) if m is not None]
        if any(ops.resolve_backend(m.backend, m.in_proj.weight.device.type) != "cpu" for m in mixers):
            return False
        if len(mixers) == 2 and not all(
            getattr(self.mamba_rev, n).weight is getattr(self.mamba_fwd, n).weight
            and getattr(self.mamba_rev, n).bias is getattr(self.mamba_fwd, n).bias
            for n in ("in_proj", "out_proj")
        ):
            return False
        return True

    @torch.no_grad()
    def forward_into(self, h: Tensor, out: Tensor, rc: bool = False, combine: bool = True, workspace=None) -> None:
        """Inference: out = self(h), or with rc=True out = rc(self(rc(h))), rc = flip of length and channels (the RC
        strand of an RCPS block); (B, L, D) views with contiguous channels, out may be h (overwritten in place)."""
        from genomics.ssm.cpu_kernel import bimamba_cpu

        dirs = self._directions(h.dtype)
        lin_in, lin_out = self.mamba_fwd.in_proj, self.mamba_fwd.out_proj
        in_w, in_b, out_w, out_b = lin_in.weight, lin_in.bias, lin_out.weight, lin_out.bias
        if rc:
            dirs = dirs[::-1]
            in_w, out_w = in_w.flip(1), out_w.flip(0)
            out_b = None if out_b is None else out_b.flip(0)
        strategy = self.bidirectional_strategy if self.bidirectional else "add"
        bimamba_cpu(h, out, in_w, in_b, dirs[0], dirs[1], out_w, out_b, strategy, combine=combine, workspace=workspace)


    def _directions(self, sd: torch.dtype) -> list:
        """The kernels' per-direction constants (A = -exp(A_log) etc.), cached until a parameter changes."""
        key = (sd, tuple((p.data_ptr(), p._version) for p in self.parameters()))
        cached = getattr(self, "_fused_cache", None)
        if cached is None or cached[0] != key:
            dirs = [None if m is None else _direction(m, sd) for m in (self.mamba_fwd, self.mamba_rev)]
            cached = self._fused_cache = (key, dirs)
        return cached[1]


def _direction(m: Mamba, sd: torch.dtype):
    from genomics.ssm.cpu_kernel import Direction

    A = -torch.exp(m.A_log.float())  # (D_in, N)
    return Direction(m.conv1d.weight, m.conv1d.bias, m.x_proj.weight, m.dt_proj.weight, m.dt_proj.bias.float(), A,
                     m.D.float(), sd)  # fmt: skip
