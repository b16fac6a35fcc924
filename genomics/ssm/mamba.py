"""Mamba-1 mixer (one direction), with mamba_ssm's parameter names and initialisation.

References: Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (Alg. 2, S4D-real init);
state-spaces/mamba `mamba_ssm/modules/mamba_simple.py` (names, shapes, dt init); transformers' `MambaMixer` (same math).

Data flow, E = expand, D_in = E * d_model, N = d_state, R = dt_rank:
    x, z  = split(in_proj(h))                      # (B, L, D_in) each
    x     = silu(causal depthwise conv1d(x))        # kernel d_conv, left-padded
    dt, B, C = split(x_proj(x), [R, N, N])
    delta = softplus(dt_proj(dt))                   # (B, L, D_in)
    y     = selective_scan(x, delta, A=-exp(A_log), B, C, D) * silu(z)
    out   = out_proj(y)                             # (B, L, d_model)
Everything after in_proj runs in `genomics.ssm.ops.mamba_inner`, which picks a backend: the pure-PyTorch reference
("torch"), the fused CPU kernel ("cpu"), mamba-ssm's CUDA kernels ("cuda") or Triton kernels ("triton"); "auto"
chooses by device.
Generic on purpose: Caduceus (genomics) and BrainMT (brain) both use it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from genomics.ssm import ops


class Mamba(nn.Module):
    """Mamba-1 selective SSM mixer: (B, L, d_model) -> (B, L, d_model)."""

    def __init__(
        self,
        d_model: int,  # model width
        d_state: int = 16,  # N, SSM state size per channel
        d_conv: int = 4,  # width of the causal depthwise convolution
        expand: int = 2,  # E, D_in = E * d_model
        dt_rank: int | str = "auto",  # R, rank of the delta projection; "auto" = ceil(d_model / 16)
        dt_min: float = 0.001,  # softplus(dt_proj.bias) starts log-uniform in [dt_min, dt_max]
        dt_max: float = 0.1,
        dt_init: str = "random",  # "random" (uniform) or "constant" dt_proj.weight init
        dt_scale: float = 1.0,  # scales the dt_proj.weight init std R^-0.5
        dt_init_floor: float = 1e-4,  # lower clamp of the initial delta
        conv_bias: bool = True,
        bias: bool = False,  # bias of in_proj and out_proj
        backend: str = "auto",  # "auto" | "torch" | "cpu" | "cuda" | "triton", see genomics.ssm.ops
        use_fast_path: bool = True,  # accepted for mamba_ssm config compatibility; `backend` decides the kernel
        layer_idx: int | None = None,  # accepted for mamba_ssm compatibility (inference cache index); unused
        device=None,
        dtype=None,
    ):
        super().__init__()
        if backend not in ops.BACKENDS:
            raise ValueError(f"unknown SSM backend {backend!r}; choose one of {ops.BACKENDS}")
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend = backend
        self.use_fast_path, self.layer_idx = use_fast_path, layer_idx

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)  # (2*D_in, d_model)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, bias=conv_bias, **factory
        )  # weight (D_in, 1, d_conv)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)  # (R+2N, D_in)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)  # (D_in, R)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state, device=device, dtype=torch.float32))  # (D_in, N)
        self.D = nn.Parameter(torch.empty(self.d_inner, device=device, dtype=torch.float32))  # (D_in,)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)  # (d_model, D_in)
        self._init_ssm(dt_min, dt_max, dt_init, dt_scale, dt_init_floor)

    @torch.no_grad()
    def _init_ssm(self, dt_min, dt_max, dt_init, dt_scale, dt_init_floor):
        """mamba_ssm's init: dt_proj.weight ~ U(+-R^-0.5 * dt_scale); softplus(dt_proj.bias) log-uniform in [dt_min,
        dt_max]; A = -[1..N] per channel (S4D-real); D = 1."""
        std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        else:
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        device = self.dt_proj.bias.device
        u = torch.rand(self.d_inner, device=device)  # (D_in,)
        dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus, (D_in,)
        self.dt_proj.bias._no_reinit = True  # Caduceus/Mamba model init zeroes other Linear biases, not this one
        a = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=device)  # (N,)
        self.A_log.copy_(torch.log(a).expand(self.d_inner, -1))  # (D_in, N)
        self.D.fill_(1.0)
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def forward(self, hidden_states: Tensor) -> Tensor:
        """(B, L, d_model) -> (B, L, d_model); the CPU kernel fuses in_proj too, so (L, 2*D_in) is never held whole."""
        A = -torch.exp(self.A_log.float())  # (D_in, N)
        return ops.mamba_mixer(
            hidden_states,
            self.in_proj.weight,
            self.in_proj.bias,
            self.conv1d.weight,
            self.conv1d.bias,
            self.x_proj.weight,
            self.dt_proj.weight,
            self.out_proj.weight,
            self.out_proj.bias,
            A,
            D=self.D.float(),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            backend=self.backend,
        )  # (B, L, d_model)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
            f"dt_rank={self.dt_rank}, backend={self.backend!r}"
        )
