"""Triton backend of the Mamba-1 selective scan and mixer inner (issue 14): `ssm_backend="triton"`.

Needs only triton and a CUDA PyTorch (no compiled extension). Same signatures and semantics as
genomics.ssm.reference (the oracle) and mamba_ssm's selective_scan_fn / mamba_inner_fn; kernels in
triton_scan_kernels and triton_conv_kernels, imported on first use (this module imports without triton).
Design notes: kb/triton.md.

selective_scan_triton: u, delta, z (B, D, L) in any memory order (time-major as in_proj(h).transpose(1, 2) is read
in place), A (D, N) real, B / C (B, N, L) or grouped (B, G, N, L) (channel d uses group d // (D / G)), D and
delta_bias (D,). The forward keeps a state checkpoint every CHUNK steps ((B, L / CHUNK, D, N) float32, N / CHUNK of
one (B, D, L) float32 tensor) when a gradient is needed; the backward recomputes each chunk from its checkpoint.

mamba_inner_triton: causal conv + SiLU (Triton) -> x_proj, dt_proj (torch matmuls) -> scan with D skip, SiLU gate
and softplus(delta + delta_bias) (Triton) -> out_proj (torch); autograd through the two Functions and the matmuls.

dtypes: float32 or bfloat16 activations (and B, C), computed in float32; outputs and input gradients in the inputs'
dtypes, dA / dD / d delta_bias / dB / dC accumulated in float32.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from genomics.ssm.triton_conv import causal_conv1d_triton, like_layout
from genomics.ssm.triton_launch import cdiv, check_tensors, next_pow2

CHUNK = 32  # time steps per chunk (BT, a power of 2): the parallel scan's width and the checkpoint interval
BLOCK_D = 8  # channels per program, at most (halved until it divides the channels of a B / C group)
NUM_WARPS = 4


@functools.cache
def _kernels():
    from genomics.ssm import triton_scan_kernels

    return triton_scan_kernels


def _grouped(M: Tensor, name: str) -> Tensor:
    """B or C as (B, G, N, L) (a view)."""
    if M.dim() == 3:
        return M.unsqueeze(1)
    if M.dim() == 4:
        return M
    raise NotImplementedError(f"triton selective_scan takes {name} of shape (B, N, L) or (B, G, N, L), got {M.shape}")


def _block_d(Dm: int, G: int) -> int:
    if Dm % G:
        raise ValueError(f"{Dm} channels do not split into {G} groups of B / C")
    bd = min(BLOCK_D, next_pow2(Dm))
    while (Dm // G) % bd:
        bd //= 2
    return bd


def _common(u, A, B4, C4, z, chunk):
    Bt, Dm, L = u.shape
    N, G = A.shape[1], B4.shape[1]
    if C4.shape[1] != G or B4.shape[2] != N or B4.shape[-1] != L or (z is not None and z.shape != u.shape):
        raise ValueError(f"inconsistent shapes: u {tuple(u.shape)}, A {tuple(A.shape)}, B {tuple(B4.shape)}, "
                         f"C {tuple(C4.shape)}, z {None if z is None else tuple(z.shape)}")  # fmt: skip
    bt = min(chunk, next_pow2(L))
    return Bt, Dm, L, N, G, bt, cdiv(L, bt), _block_d(Dm, G)


def scan_fwd(u, delta, A, B4, C4, D, z, delta_bias, softplus: bool, save: bool, chunk: int):
    """out (B, D, L) in u's dtype and memory order, and the checkpoints (B, n_chunks, D, N) float32 when `save`."""
    Bt, Dm, L, N, G, bt, n_chunks, bd = _common(u, A, B4, C4, z, chunk)
    out = like_layout(u)
    ckpt = torch.empty(Bt, n_chunks, Dm, N, dtype=torch.float32, device=u.device) if save else out
    zs = z.stride() if z is not None else (0, 0, 0)
    _kernels().scan_fwd_kernel[(Bt, cdiv(Dm, bd))](
        u, delta, A, B4, C4, u if D is None else D, u if z is None else z, u if delta_bias is None else delta_bias,
        out, ckpt, L, Dm, N, n_chunks, Dm // G,
        *u.stride(), *delta.stride(), *zs, *out.stride(), *B4.stride(), *C4.stride(), *A.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, SAVE=save,
        BD=bd, BN=next_pow2(N), BT=bt, num_warps=NUM_WARPS,
    )  # fmt: skip
    return out, (ckpt if save else None)


def scan_bwd(u, delta, A, B4, C4, D, z, delta_bias, softplus: bool, ckpt: Tensor, gout: Tensor, chunk: int):
    """(du, ddelta, dz) (B, D, L) in their inputs' dtypes; dA (D, N), dD, dbias (D,), dB, dC (B, G, N, L) float32."""
    Bt, Dm, L, N, G, bt, n_chunks, bd = _common(u, A, B4, C4, z, chunk)
    dev, f32 = u.device, torch.float32
    du = torch.empty(Bt, Dm, L, dtype=u.dtype, device=dev)
    ddt = torch.empty(Bt, Dm, L, dtype=delta.dtype, device=dev)
    dz = torch.empty(Bt, Dm, L, dtype=z.dtype, device=dev) if z is not None else du
    dA = torch.empty(Bt, Dm, N, dtype=f32, device=dev)  # per batch row, summed below
    dD = torch.empty(Bt, Dm, dtype=f32, device=dev)
    dbias = torch.empty(Bt, Dm, dtype=f32, device=dev)
    dB = torch.zeros(Bt, G, N, L, dtype=f32, device=dev)  # atomic adds over the channels of a group
    dC = torch.zeros(Bt, G, N, L, dtype=f32, device=dev)
    zs = z.stride() if z is not None else (0, 0, 0)
    _kernels().scan_bwd_kernel[(Bt, cdiv(Dm, bd))](
        u, delta, A, B4, C4, u if D is None else D, u if z is None else z, u if delta_bias is None else delta_bias,
        ckpt, gout, du, ddt, dz, dA, dD, dbias, dB, dC, L, Dm, N, n_chunks, Dm // G, G,
        *u.stride(), *delta.stride(), *zs, *gout.stride(), *B4.stride(), *C4.stride(), *A.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
        BD=bd, BN=next_pow2(N), BT=bt, num_warps=NUM_WARPS,
    )  # fmt: skip
    return du, ddt, (dz if z is not None else None), dA.sum(0), dD.sum(0), dbias.sum(0), dB, dC


def _grad(g: Tensor | None, like: Tensor | None, needed: bool) -> Tensor | None:
    if g is None or like is None or not needed:
        return None
    return g.to(like.dtype).reshape(like.shape)


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        ctx.chunk = CHUNK
        out, ckpt = scan_fwd(u, delta, A, _grouped(B, "B"), _grouped(C, "C"), D, z, delta_bias, delta_softplus,
                             save=True, chunk=ctx.chunk)  # fmt: skip
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.delta_softplus = delta_softplus
        return out

    @staticmethod
    def backward(ctx, gout):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        du, ddt, dz, dA, dD, dbias, dB, dC = scan_bwd(
            u, delta, A, _grouped(B, "B"), _grouped(C, "C"), D, z, delta_bias, ctx.delta_softplus, ckpt, gout,
            ctx.chunk,
        )  # fmt: skip
        need = ctx.needs_input_grad
        return (
            _grad(du, u, need[0]),
            _grad(ddt, delta, need[1]),
            _grad(dA, A, need[2]),
            _grad(dB, B, need[3]),
            _grad(dC, C, need[4]),
            _grad(dD, D, need[5]),
            _grad(dz, z, need[6]),
            _grad(dbias, delta_bias, need[7]),
            None,
        )


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False) -> Tensor:
    """Selective scan on Triton; (B, D, L) in and out, as reference.selective_scan_ref."""
    check_tensors(u, delta, A, B, C, D, z, delta_bias)
    if A.is_complex():
        raise NotImplementedError("triton selective_scan supports real A only")
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _SelectiveScanFn.apply(*tensors, delta_softplus)
    return scan_fwd(u, delta, A, _grouped(B, "B"), _grouped(C, "C"), D, z, delta_bias, delta_softplus, save=False,
                    chunk=CHUNK)[0]  # fmt: skip


def mamba_inner_triton(
    xz: Tensor,  # (B, 2D, L), in_proj's output channels first
    conv1d_weight: Tensor,  # (D, 1, K)
    conv1d_bias: Tensor | None,  # (D,)
    x_proj_weight: Tensor,  # (R + 2N, D)
    delta_proj_weight: Tensor,  # (D, R)
    out_proj_weight: Tensor,  # (d_model, D)
    out_proj_bias: Tensor | None,  # (d_model,)
    A: Tensor,  # (D, N)
    D: Tensor | None = None,  # (D,)
    delta_bias: Tensor | None = None,  # (D,)
    delta_softplus: bool = True,
) -> Tensor:
    """Mixer inner + out_proj on Triton; (B, 2D, L) in, (B, L, d_model) out, as reference.mamba_inner_ref."""
    rank, d_state = delta_proj_weight.shape[1], A.shape[1]
    x, z = xz.chunk(2, dim=1)  # (B, D, L) views
    xs = causal_conv1d_triton(x, conv1d_weight, conv1d_bias, activation="silu")  # (B, D, L), xz's memory order
    x_dbl = F.linear(xs.transpose(1, 2), x_proj_weight.to(xs.dtype))  # (B, L, R + 2N)
    dt, Bm, Cm = torch.split(x_dbl, [rank, d_state, d_state], dim=-1)
    delta = F.linear(dt, delta_proj_weight.to(xs.dtype)).transpose(1, 2)  # (B, D, L), time-major memory
    y = selective_scan_triton(xs, delta, A, Bm.transpose(1, 2), Cm.transpose(1, 2), D, z, delta_bias, delta_softplus)
    w_out = out_proj_weight.to(y.dtype)
    b_out = None if out_proj_bias is None else out_proj_bias.to(y.dtype)
    return F.linear(y.transpose(1, 2), w_out, b_out)  # (B, L, d_model)
