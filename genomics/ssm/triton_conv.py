"""Causal depthwise conv1d (+ SiLU) on Triton (issue 14), with autograd; kernels in triton_conv_kernels (lazy).

`causal_conv1d_triton(x (B, D, L), weight (D, K) or (D, 1, K), bias (D,) | None, activation "silu" | None)` equals
`act(F.conv1d(x, weight, bias, padding=K - 1, groups=D)[..., :L])` (as in genomics.ssm.reference.mamba_inner_ref and
causal-conv1d's causal_conv1d_fn). The output has x's memory order (time-major x -> time-major output, as
in_proj(h).transpose(1, 2) is). float32 / bfloat16 in, float32 accumulation, output in x's dtype.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from genomics.ssm.triton_launch import cdiv, check_tensors, next_pow2

BLOCK_D = 32  # channels per program
BLOCK_T = 128  # time steps per program (rounded down to the next power of 2 >= L when L is shorter)
NUM_WARPS = 4


@functools.cache
def _kernels():
    from genomics.ssm import triton_conv_kernels

    return triton_conv_kernels


def like_layout(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """An empty (B, C, L) tensor with x's memory order: time-major when x is (stride over C of 1)."""
    Bt, C, L = x.shape
    dtype = x.dtype if dtype is None else dtype
    if x.stride(1) == 1 and L > 1:
        return torch.empty(Bt, L, C, dtype=dtype, device=x.device).transpose(1, 2)
    return torch.empty(Bt, C, L, dtype=dtype, device=x.device)


def _blocks(Dm: int, L: int) -> tuple[int, int]:
    return min(BLOCK_D, next_pow2(Dm)), min(BLOCK_T, next_pow2(L))


def _weight2d(weight: Tensor) -> Tensor:
    return weight.reshape(weight.shape[0], weight.shape[-1])  # (D, K)


def conv_fwd(x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool) -> Tensor:
    Bt, Dm, L = x.shape
    w = _weight2d(weight)
    bd, bt = _blocks(Dm, L)
    out = like_layout(x)
    _kernels().conv_fwd_kernel[(Bt, cdiv(Dm, bd), cdiv(L, bt))](
        x, w, x if bias is None else bias, out, L, Dm, *x.stride(), *w.stride(), *out.stride(),
        K=w.shape[1], HAS_BIAS=bias is not None, SILU=silu, BD=bd, BT=bt, num_warps=NUM_WARPS,
    )  # fmt: skip
    return out


def conv_bwd(x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool, gout: Tensor):
    """(dx (B, D, L) in x's dtype, dw (D, K) float32, db (D,) float32)."""
    Bt, Dm, L = x.shape
    w = _weight2d(weight)
    K = w.shape[1]
    bd, bt = _blocks(Dm, L)
    n_tb = cdiv(L, bt)
    dx = like_layout(x)
    gp = torch.empty(Bt, Dm, L, dtype=torch.float32, device=x.device)  # dL/d(conv output before SiLU)
    dw = torch.empty(Bt, n_tb, Dm, K, dtype=torch.float32, device=x.device)  # partial sums per time block
    db = torch.empty(Bt, n_tb, Dm, dtype=torch.float32, device=x.device)
    grid = (Bt, cdiv(Dm, bd), n_tb)
    kern = _kernels()
    kern.conv_bwd_kernel[grid](
        x, w, x if bias is None else bias, gout, gp, dw, db, L, Dm, n_tb, *x.stride(), *w.stride(), *gout.stride(),
        K=K, HAS_BIAS=bias is not None, SILU=silu, BD=bd, BT=bt, num_warps=NUM_WARPS,
    )  # fmt: skip
    kern.conv_dx_kernel[grid](gp, w, dx, L, Dm, *w.stride(), *dx.stride(), K=K, BD=bd, BT=bt, num_warps=NUM_WARPS)
    return dx, dw.sum((0, 1)), db.sum((0, 1))


class _CausalConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu):
        ctx.save_for_backward(x, weight, bias)
        ctx.silu = silu
        return conv_fwd(x, weight, bias, silu)

    @staticmethod
    def backward(ctx, gout):
        x, weight, bias = ctx.saved_tensors
        dx, dw, db = conv_bwd(x, weight, bias, ctx.silu, gout)
        need = ctx.needs_input_grad
        return (
            dx if need[0] else None,
            dw.to(weight.dtype).reshape(weight.shape) if need[1] else None,
            db.to(bias.dtype) if bias is not None and need[2] else None,
            None,
        )


def causal_conv1d_triton(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = "silu"):
    """Causal depthwise conv1d of x (B, D, L) with weight (D, K) or (D, 1, K), then SiLU; (B, D, L) out."""
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    if x.dim() != 3 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"expected x (B, D, L) and weight (D, [1,] K), got {tuple(x.shape)}, {tuple(weight.shape)}")
    check_tensors(x, weight, bias)
    silu = activation is not None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return _CausalConvFn.apply(x, weight, bias, silu)
    return conv_fwd(x, weight, bias, silu)
