"""Pure-PyTorch reference of the Mamba-1 selective scan and mixer inner (Gu & Dao 2023, mamba_ssm's *_ref functions).

Sequential over the length axis: slow but obviously correct; every faster backend is tested against it.
Layout follows mamba_ssm: channels first, u / delta / z (B, D, L), A (D, N), B / C (B, N, L).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def selective_scan_ref(
    u: Tensor,  # (B, D, L)
    delta: Tensor,  # (B, D, L)
    A: Tensor,  # (D, N), negative real
    B: Tensor,  # (B, N, L)
    C: Tensor,  # (B, N, L)
    D: Tensor | None = None,  # (D,)
    z: Tensor | None = None,  # (B, D, L) gate
    delta_bias: Tensor | None = None,  # (D,)
    delta_softplus: bool = False,
) -> Tensor:
    """y_t = C_t . h_t + D x_t, h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t; then y * silu(z). Returns (B, D, L)."""
    dtype_in = u.dtype
    u, delta, B, C = u.float(), delta.float(), B.float(), C.float()
    A = A.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, d_inner, length = u.shape
    h = u.new_zeros(batch, d_inner, A.shape[1])  # (B, D, N)
    ys = []
    for t in range(length):
        dt = delta[:, :, t, None]  # (B, D, 1)
        h = torch.exp(dt * A) * h + dt * B[:, None, :, t] * u[:, :, t, None]  # (B, D, N)
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))  # (B, D)
    y = torch.stack(ys, dim=-1)  # (B, D, L)
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype_in)


def mamba_inner_ref(
    xz: Tensor,  # (B, 2*D, L) output of in_proj, channels first
    conv1d_weight: Tensor,  # (D, 1, K)
    conv1d_bias: Tensor | None,  # (D,)
    x_proj_weight: Tensor,  # (R + 2N, D)
    delta_proj_weight: Tensor,  # (D, R)
    out_proj_weight: Tensor,  # (d_model, D)
    out_proj_bias: Tensor | None,  # (d_model,)
    A: Tensor,  # (D, N)
    D: Tensor | None = None,  # (D,)
    delta_bias: Tensor | None = None,  # (D,) = dt_proj.bias
    delta_softplus: bool = True,
) -> Tensor:
    """Everything between in_proj and out_proj of one Mamba-1 mixer, then out_proj. Returns (B, L, d_model)."""
    length = xz.shape[-1]
    rank, d_state = delta_proj_weight.shape[1], A.shape[1]
    x, z = xz.chunk(2, dim=1)  # (B, D, L) each
    k = conv1d_weight.shape[-1]
    x = F.conv1d(x, conv1d_weight, conv1d_bias, padding=k - 1, groups=x.shape[1])[..., :length]  # causal
    x = F.silu(x)  # (B, D, L)
    x_dbl = F.linear(x.transpose(1, 2), x_proj_weight)  # (B, L, R + 2N)
    dt, B, C = torch.split(x_dbl, [rank, d_state, d_state], dim=-1)
    delta = F.linear(dt, delta_proj_weight).transpose(1, 2)  # (B, D, L), bias added inside the scan
    y = selective_scan_ref(
        x, delta, A, B.transpose(1, 2), C.transpose(1, 2), D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus
    )  # (B, D, L)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)  # (B, L, d_model)
