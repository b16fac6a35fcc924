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
and softplus(delta + delta_bias) (Triton) -> out_proj (torch), one autograd Function whose backward recomputes the
conv output, delta and the scan output (saved: xz, x_dbl (B, L, R + 2N) and the scan checkpoints), as mamba_ssm's
mamba_inner_fn and the CPU kernel do.

dtypes: float32 or bfloat16 activations (and B, C), computed in float32; outputs and input gradients in the inputs'
dtypes, dA / dD / d delta_bias / dB / dC accumulated in float32.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from genomics.ssm.triton_conv import conv_bwd, conv_fwd, like_layout
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


def scan_bwd(u, delta, A, B4, C4, D, z, delta_bias, softplus: bool, ckpt: Tensor, gout: Tensor, chunk: int,
             y_out: Tensor | None = None):  # fmt: skip
    """(du, ddelta, dz) (B, D, L) in their inputs' dtypes; dA (D, N), dD, dbias (D,), dB, dC (B, G, N, L) float32.
    y_out (B, D, L), any strides: filled with the forward's output, recomputed."""
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
        ckpt, gout, du, ddt, dz, dA, dD, dbias, dB, dC, du if y_out is None else y_out, L, Dm, N, n_chunks, Dm // G, G,
        *u.stride(), *delta.stride(), *zs, *gout.stride(), *B4.stride(), *C4.stride(), *A.stride(),
        *(du if y_out is None else y_out).stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
        SAVE_Y=y_out is not None, BD=bd, BN=next_pow2(N), BT=bt, num_warps=NUM_WARPS,
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


def _inner_forward(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D, delta_bias, softplus,
                   save: bool):  # fmt: skip
    """mamba_inner's forward: (out (B, L, d_model), x_dbl (B, L, R + 2N), checkpoints or None)."""
    rank, N = dt_proj_w.shape[1], A.shape[1]
    x, z = xz.chunk(2, dim=1)  # (B, D, L) views
    xs = conv_fwd(x, conv_w, conv_b, silu=True)  # (B, D, L), xz's memory order
    sd = xs.dtype
    x_dbl = F.linear(xs.transpose(1, 2), x_proj_w.to(sd))  # (B, L, R + 2N)
    delta = F.linear(x_dbl[..., :rank], dt_proj_w.to(sd)).transpose(1, 2)  # (B, D, L), time-major memory
    B4 = x_dbl[..., rank : rank + N].transpose(1, 2).unsqueeze(1)  # (B, 1, N, L) views
    C4 = x_dbl[..., rank + N :].transpose(1, 2).unsqueeze(1)
    y, ckpt = scan_fwd(xs, delta, A, B4, C4, D, z, delta_bias, softplus, save=save, chunk=CHUNK)  # (B, D, L)
    b_out = None if out_proj_b is None else out_proj_b.to(sd)
    return F.linear(y.transpose(1, 2), out_proj_w.to(sd), b_out), x_dbl, ckpt


class _MambaInnerFn(torch.autograd.Function):
    """The mixer inner with a lean backward (as mamba_ssm's mamba_inner_fn and the CPU kernel): saves xz, x_dbl and
    the scan checkpoints; the conv output, delta and the scan output are recomputed."""

    @staticmethod
    def forward(ctx, xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D, delta_bias, softplus):
        ctx.chunk = CHUNK
        out, x_dbl, ckpt = _inner_forward(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D,
                                          delta_bias, softplus, save=True)  # fmt: skip
        ctx.save_for_backward(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D, delta_bias,
                              x_dbl, ckpt)  # fmt: skip
        ctx.softplus = softplus
        return out

    @staticmethod
    def backward(ctx, gout):
        xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D, delta_bias, x_dbl, ckpt = (
            ctx.saved_tensors
        )
        rank, N = dt_proj_w.shape[1], A.shape[1]
        x, z = xz.chunk(2, dim=1)
        xs = conv_fwd(x, conv_w, conv_b, silu=True)  # recomputed, (B, D, L)
        sd = xs.dtype
        Bt, d_inner, L = xs.shape
        dt_w, x_w, out_w = dt_proj_w.to(sd), x_proj_w.to(sd), out_proj_w.to(sd)
        delta = F.linear(x_dbl[..., :rank], dt_w).transpose(1, 2)  # recomputed, (B, D, L)
        B4 = x_dbl[..., rank : rank + N].transpose(1, 2).unsqueeze(1)
        C4 = x_dbl[..., rank + N :].transpose(1, 2).unsqueeze(1)
        gout = gout.to(sd)  # (B, L, d_model)
        gy = (gout @ out_w).transpose(1, 2)  # dL/d(scan output), (B, D, L) time-major
        y = like_layout(gy)  # the scan output, recomputed by the backward kernel, (B, D, L) time-major
        du, ddelta, dz, dA, dD, dbias, dB, dC = scan_bwd(xs, delta, A, B4, C4, D, z, delta_bias, ctx.softplus, ckpt,
                                                         gy, ctx.chunk, y_out=y)  # fmt: skip
        flat = (Bt * L, -1)
        gflat = gout.reshape(flat)
        d_out_w = gflat.t() @ y.transpose(1, 2).reshape(flat)  # (d_model, D)
        d_out_b = None if out_proj_b is None else gflat.sum(0)
        del y, gy
        ddelta_t = ddelta.transpose(1, 2)  # (B, L, D)
        dx_dbl = torch.cat([ddelta_t @ dt_w, dB[:, 0].transpose(1, 2).to(sd), dC[:, 0].transpose(1, 2).to(sd)], -1)
        d_dt_w = ddelta_t.reshape(flat).t() @ x_dbl[..., :rank].reshape(flat)  # (D, R)
        xs_t = xs.transpose(1, 2)  # (B, L, D)
        d_x_w = dx_dbl.reshape(flat).t() @ xs_t.reshape(flat)  # (R + 2N, D)
        dxs = du + (dx_dbl @ x_w).transpose(1, 2)  # dL/dxs, (B, D, L)
        del xs, xs_t, dx_dbl, du, ddelta, ddelta_t
        dx, d_conv_w, d_conv_b = conv_bwd(x, conv_w, conv_b, True, dxs)
        dxz = torch.cat([dx, dz], dim=1)  # (B, 2D, L)
        need = ctx.needs_input_grad
        return (
            _grad(dxz, xz, need[0]),
            _grad(d_conv_w, conv_w, need[1]),
            _grad(d_conv_b, conv_b, need[2]),
            _grad(d_x_w, x_proj_w, need[3]),
            _grad(d_dt_w, dt_proj_w, need[4]),
            _grad(d_out_w, out_proj_w, need[5]),
            _grad(d_out_b, out_proj_b, need[6]),
            _grad(dA, A, need[7]),
            _grad(dD, D, need[8]),
            _grad(dbias, delta_bias, need[9]),
            None,
        )


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
    args = (xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias, A, D,
            delta_bias)  # fmt: skip
    check_tensors(*args)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
        return _MambaInnerFn.apply(*args, delta_softplus)
    return _inner_forward(*args, delta_softplus, save=False)[0]
