"""Fused CPU backend of the Mamba-1 selective scan and mixer inner (issue 4), forward and backward.

Same signatures and semantics as genomics.ssm.reference (the oracle) and mamba_ssm's selective_scan_fn /
mamba_inner_fn. Numba kernels: _cpu_scan (scan, forward and backward), _cpu_conv (causal conv + SiLU); their scalar
math (a vectorisable exp) in _cpu_math; buffers, threads and the JIT cache in _cpu_launch. Design notes and
measurements: kb/cpu-kernel.md.

mamba_inner_cpu keeps only two matmuls of the mixer inner in torch (x_proj, out_proj): causal conv + SiLU is one
kernel; dt_proj, softplus(dt + bias), the scan, the D skip and the SiLU gate are the other. xz is read in place when
its memory is time-major, i.e. xz = in_proj(h).transpose(1, 2) (a channels-major xz costs one transposed copy).
The forward runs tile by tile (FWD_TILE rows, the scan state carried between tiles): besides xz and the output, only
(B, FWD_TILE, D) buffers exist, and the scan writes its output over its input. No (B, L, D, N) tensor ever.
With grad enabled, the forward also keeps x_dbl (B, L, R + 2N) and a state checkpoint every CHUNK steps
((B, L / CHUNK, N, D), a quarter of one (B, L, D) tensor); the backward recomputes the states chunk by chunk, so its
memory is O(B L D) too.

dtypes: float32 and bfloat16 activations are computed in float32 (bf16 is read / written as 16-bit words, no
converted copies); float64 is computed in float64 (used by gradcheck). Weights are cast to xz's dtype for the
matmuls; A, D, biases and conv weights are used in the compute dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from genomics.ssm import _cpu_launch as K

FWD_TILE = 8192  # rows per tile of the mixer forward (rounded down to a multiple of CHUNK); fewer tiles = fewer
# parallel regions, which matters on a loaded machine (each one can wait for a descheduled thread)


def _grad(g: Tensor | None, like: Tensor | None, needed: bool):
    if g is None or like is None or not needed:
        return None
    return g.to(like.dtype).reshape(like.shape)


def _wants_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ---------------------------------------------------------------------------------------------- selective scan


def _scan_inputs(u, delta, B, C, z):
    """Time-major copies in one storage dtype: u, delta (Bt, L, D), [B | C] (Bt, L, 2N), z (Bt, L, D) or None."""
    if B.dim() != 3 or C.dim() != 3:
        raise NotImplementedError("cpu selective_scan supports input-dependent B, C of shape (batch, d_state, L)")
    sd = K.storage_dtype(u, delta, B, C, z)
    xbc = K.time_major(torch.cat([B.to(sd), C.to(sd)], dim=1), sd)
    zt = None if z is None else K.time_major(z, sd)
    return K.time_major(u, sd), K.time_major(delta, sd), xbc, zt


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        ut, dtt, xbc, zt = _scan_inputs(u, delta, B, C, z)
        p = K.ScanParams(A, D, delta_bias, delta_softplus, K.compute_dtype(ut.dtype))
        Bt, L, d_inner = ut.shape
        ckpt = torch.empty(Bt, math.ceil(L / K.CHUNK), A.shape[1], d_inner, dtype=p.A2t.dtype)
        out = torch.empty_like(dtt)
        K.run_scan(p, ut, xbc, 0, A.shape[1], zt, 0, out, dt=dtt, ckpt=ckpt)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.delta_softplus = delta_softplus
        return out.transpose(1, 2).to(u.dtype)  # (Bt, D, L)

    @staticmethod
    def backward(ctx, gout):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        ut, dtt, xbc, zt = _scan_inputs(u, delta, B, C, z)
        p = K.ScanParams(A, D, delta_bias, ctx.delta_softplus, K.compute_dtype(ut.dtype))
        N = A.shape[1]
        dzt = None if z is None else torch.empty_like(zt)
        gt = K.time_major(gout, ut.dtype)
        du, ddt, dbc, dA, dD, dbias = K.run_scan_bwd(p, ut, xbc, 0, N, zt, 0, ckpt, gt, dzt, 0, None, dt=dtt)
        need = ctx.needs_input_grad
        dbc = dbc.transpose(1, 2)  # (Bt, 2N, L)
        return (
            _grad(du.transpose(1, 2), u, need[0]),
            _grad(ddt.transpose(1, 2), delta, need[1]),
            _grad(dA, A, need[2]),
            _grad(dbc[:, :N], B, need[3]),
            _grad(dbc[:, N:], C, need[4]),
            _grad(dD, D, need[5]),
            _grad(None if dzt is None else dzt.transpose(1, 2), z, need[6]),
            _grad(dbias, delta_bias, need[7]),
            None,
        )


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False) -> Tensor:
    """Fused selective scan; (B, D, L) in and out, as reference.selective_scan_ref."""
    if _wants_grad(u, delta, A, B, C, D, z, delta_bias):
        return _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    ut, dtt, xbc, zt = _scan_inputs(u, delta, B, C, z)
    p = K.ScanParams(A, D, delta_bias, delta_softplus, K.compute_dtype(ut.dtype))
    out = dtt if dtt.data_ptr() != delta.data_ptr() else torch.empty_like(dtt)  # never overwrite the caller's delta
    K.run_scan(p, ut, xbc, 0, A.shape[1], zt, 0, out, dt=dtt)
    return out.transpose(1, 2).to(u.dtype)


# ------------------------------------------------------------------------------------------------- mamba inner


def _linear_into(x: Tensor, weight: Tensor, bias: Tensor | None, out: Tensor) -> None:
    """out[b] = x[b] @ weight^T (+ bias) for x (B, T, K), out (B, T, M) with contiguous rows per batch."""
    for b in range(x.shape[0]):
        if bias is None:
            torch.mm(x[b], weight.t(), out=out[b])
        else:
            torch.addmm(bias, x[b], weight.t(), out=out[b])


def _tiled_forward(xz_rows, Bt, L, sd, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D, delta_bias,
                   softplus, save):  # fmt: skip
    """The mixer inner tile by tile. xz_rows(t0, T) -> (xzt, r0): a time-major (B, ., 2D) array in dtype `sd` whose
    row r0 + t is sequence row t0 + t, holding the d_conv - 1 rows before t0 too when t0 > 0 (the conv's history).
    Returns out (B, L, d_model), and when `save` x_dbl (B, L, R + 2N) and the checkpoints."""
    d_inner, N = A.shape
    rank = dt_proj_w.shape[1]
    ct = K.compute_dtype(sd)
    tile = min(L, max(K.CHUNK, FWD_TILE - FWD_TILE % K.CHUNK))  # tiles start on checkpoint boundaries
    wT, cb = K.conv_weights(conv_w, conv_b, ct)
    p = K.ScanParams(A, D, delta_bias, softplus, ct, dt_w=dt_proj_w)
    x_w, out_w = x_proj_w.to(sd), out_proj_w.to(sd)
    out_b = None if out_proj_b is None else out_proj_b.to(sd)
    xs_buf = torch.empty(Bt * tile * d_inner, dtype=sd)  # xs, then the scan output over it
    xd_buf = torch.empty(Bt * tile * x_w.shape[0], dtype=sd)
    x_dbl = torch.empty(Bt, L, x_w.shape[0], dtype=sd) if save else None  # (B, L, R + 2N) = [dt | B | C]
    ckpt = torch.empty(Bt, math.ceil(L / K.CHUNK), N, d_inner, dtype=ct) if save else None
    h = torch.zeros(Bt, N, d_inner, dtype=ct)  # scan state carried across tiles
    out = torch.empty(Bt, L, out_w.shape[0], dtype=sd)  # (B, L, d_model)
    for t0 in range(0, L, tile):
        T = min(tile, L - t0)
        xzt, r0 = xz_rows(t0, T)
        xs = xs_buf[: Bt * T * d_inner].view(Bt, T, d_inner)
        xd = xd_buf[: Bt * T * x_w.shape[0]].view(Bt, T, -1)
        K.run_conv(xzt, wT, cb, xs, r0)  # (B, T, D)
        torch.matmul(xs, x_w.t(), out=xd)  # (B, T, R + 2N)
        if save:
            x_dbl[:, t0 : t0 + T] = xd
        K.run_scan(p, xs, xd, rank, rank + N, xzt, d_inner, xs, z_t0=r0, h0=h, ckpt=ckpt, ck0=t0 // K.CHUNK)
        _linear_into(xs, out_w, out_b, out[:, t0 : t0 + T])  # out_proj of the gated scan output
    return out, x_dbl, ckpt


def _inner_forward(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D, delta_bias, softplus,
                   save):  # fmt: skip
    """mamba_inner's forward: tiles read in place from the whole xz."""
    xzt = K.time_major(xz, K.storage_dtype(xz))  # (B, L, 2D)
    Bt, L, _ = xzt.shape
    return _tiled_forward(
        lambda t0, T: (xzt, t0), Bt, L, xzt.dtype, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b,
        A, D, delta_bias, softplus, save,
    )  # fmt: skip


class _MambaInnerFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D, delta_bias, softplus):
        out, x_dbl, ckpt = _inner_forward(
            xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D, delta_bias, softplus, save=True
        )
        ctx.save_for_backward(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D, delta_bias,
                              x_dbl, ckpt)  # fmt: skip
        ctx.softplus = softplus
        return out

    @staticmethod
    def backward(ctx, gout):
        xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D, delta_bias, x_dbl, ckpt = (
            ctx.saved_tensors
        )
        d_inner, N = A.shape
        rank = dt_proj_w.shape[1]
        xzt = K.time_major(xz, K.storage_dtype(xz))  # (B, L, 2D)
        sd = xzt.dtype
        Bt, L, _ = xzt.shape
        flat = (Bt * L, -1)
        wT, cb = K.conv_weights(conv_w, conv_b, K.compute_dtype(sd))
        p = K.ScanParams(A, D, delta_bias, ctx.softplus, K.compute_dtype(sd), dt_w=dt_proj_w)
        xs = torch.empty(Bt, L, d_inner, dtype=sd)
        K.run_conv(xzt, wT, cb, xs)  # recomputed, (B, L, D)
        gout = gout.to(sd)
        gy = gout @ out_proj_w.to(sd)  # dL/d(gated y), (B, L, D)
        dxz = torch.empty_like(xzt)  # (B, L, 2D): z half from the scan, x half from the conv
        ygate = torch.empty_like(xs)  # the forward's scan output, recomputed for out_proj's weight gradient
        du, ddelta, dbc, dA, dD, dbias = K.run_scan_bwd(
            p, xs, x_dbl, rank, rank + N, xzt, d_inner, ckpt, gy, dxz, d_inner, ygate, dt_off=0
        )
        d_out_w = gout.reshape(flat).t() @ ygate.reshape(flat)  # (d_model, D)
        d_out_b = None if out_proj_b is None else gout.reshape(flat).sum(0)
        del ygate, gy
        dx_dbl = torch.cat([ddelta @ dt_proj_w.to(sd), dbc.to(sd)], dim=-1)  # (B, L, R + 2N)
        d_dt_w = ddelta.reshape(flat).t() @ x_dbl[..., :rank].reshape(flat)  # (D, R)
        del ddelta
        d_x_w = dx_dbl.reshape(flat).t() @ xs.reshape(flat)  # (R + 2N, D)
        du.reshape(flat).addmm_(dx_dbl.reshape(flat), x_proj_w.to(sd))  # dL/dxs, (B, L, D)
        del xs, dx_dbl
        d_conv_w, d_conv_b = K.run_conv_bwd(xzt, wT, cb, du, dxz)
        need = ctx.needs_input_grad
        return (
            _grad(dxz.transpose(1, 2), xz, need[0]),
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


def mamba_inner_cpu(
    xz: Tensor,
    conv1d_weight: Tensor,
    conv1d_bias: Tensor | None,
    x_proj_weight: Tensor,
    delta_proj_weight: Tensor,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    A: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
) -> Tensor:
    """Fused mixer inner + out_proj; (B, 2D, L) in, (B, L, d_model) out, as reference.mamba_inner_ref.
    Under torch.inference_mode / no_grad nothing is kept for a backward."""
    args = (xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias, A, D,
            delta_bias)  # fmt: skip
    if _wants_grad(*args):
        return _MambaInnerFn.apply(*args, delta_softplus)
    return _inner_forward(*args, delta_softplus, save=False)[0]


def mamba_mixer_cpu(
    hidden_states: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor | None,
    conv1d_weight: Tensor,
    conv1d_bias: Tensor | None,
    x_proj_weight: Tensor,
    delta_proj_weight: Tensor,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    A: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
) -> Tensor:
    """The whole mixer, in_proj included: (B, L, d_model) -> (B, L, d_model), = mamba_inner(in_proj(h)^T, ...).
    In inference in_proj is tiled too (each tile recomputes the d_conv - 1 rows before it), so no full-length
    (B, L, 2D) xz exists: only the input, the output and (B, FWD_TILE, 2D) buffers. With grad: in_proj, then
    mamba_inner_cpu."""
    weights = (conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias, A, D,
               delta_bias)  # fmt: skip
    if _wants_grad(hidden_states, in_proj_weight, in_proj_bias, *weights):
        xz = F.linear(hidden_states, in_proj_weight, in_proj_bias).transpose(1, 2)  # (B, 2D, L), time-major memory
        return mamba_inner_cpu(xz, *weights, delta_softplus=delta_softplus)
    Bt, L, _ = hidden_states.shape
    sd = K.storage_dtype(hidden_states)
    w_in = in_proj_weight.to(sd)
    b_in = None if in_proj_bias is None else in_proj_bias.to(sd)
    halo = conv1d_weight.shape[-1] - 1
    tile = min(L, max(K.CHUNK, FWD_TILE - FWD_TILE % K.CHUNK))
    xz_buf = torch.empty(Bt * (tile + halo) * w_in.shape[0], dtype=sd)
    hidden = hidden_states.to(sd)

    def xz_rows(t0: int, T: int):
        s = max(0, t0 - halo)  # the conv's history rows are recomputed
        xzt = xz_buf[: Bt * (t0 + T - s) * w_in.shape[0]].view(Bt, t0 + T - s, -1)  # (B, rows, 2D)
        _linear_into(hidden[:, s : t0 + T], w_in, b_in, xzt)
        return xzt, t0 - s

    return _tiled_forward(xz_rows, Bt, L, sd, *weights, delta_softplus, save=False)[0]


# ------------------------------------------------------------------------------------------ bidirectional mixer


def _rows(x: Tensor) -> list[Tensor]:
    """(B, T, C) with contiguous channels -> 2-D (rows, C) views for torch.mm: one when B * T rows are evenly
    strided, else one per batch."""
    if x.shape[0] == 1 or x.stride(0) == x.shape[1] * x.stride(1):
        return [x.view(-1, x.shape[-1]) if x.is_contiguous() else x.reshape(-1, x.shape[-1])]
    return [x[b] for b in range(x.shape[0])]


def _mm_into(x: Tensor, w: Tensor, bias: Tensor | None, out: Tensor, accumulate: bool = False) -> None:
    """out (B, T, M) (=|+=) x (B, T, K) @ w^T (+ bias); x, out may be strided views with contiguous rows."""
    for xr, orow in zip(_rows(x), _rows(out), strict=True):
        if accumulate:
            orow.addmm_(xr, w.t()) if bias is None else orow.addmm_(xr, w.t()).add_(bias)
        elif bias is None:
            torch.mm(xr, w.t(), out=orow)
        else:
            torch.addmm(bias, xr, w.t(), out=orow)


class Direction:
    """The per-direction weights of one Mamba-1 mixer (those not shared by a BiMamba pair), prepared for the
    kernels: conv weight (D, 1, K) and bias, x_proj (R + 2N, D), dt_proj weight (D, R) and bias, A (D, N), D."""

    def __init__(self, conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A, D, sd: torch.dtype):
        ct = K.compute_dtype(sd)
        self.wT, self.cb = K.conv_weights(conv_w, conv_b, ct)
        self.x_w = x_proj_w.detach().to(sd)
        self.p = K.ScanParams(A, D, dt_bias, True, ct, dt_w=dt_proj_w)
        self.rank, self.N = dt_proj_w.shape[1], A.shape[1]


def _buffer(workspace: dict | None, name: str, numel: int, dtype: torch.dtype) -> Tensor:
    """A flat work buffer of at least `numel` elements, kept in `workspace` (a dict owned by the caller) so that
    repeated calls reuse memory instead of faulting in fresh pages (kb/cpu-kernel.md, "Memory allocator")."""
    if workspace is None:
        return torch.empty(numel, dtype=dtype)
    buf = workspace.get(name)
    if buf is None or buf.numel() < numel or buf.dtype != dtype:
        workspace.pop(name, None)
        buf = workspace[name] = torch.empty(numel, dtype=dtype)
    return buf


def bimamba_cpu(h: Tensor, out: Tensor, in_w: Tensor, in_b: Tensor | None, fwd: Direction | None,
                rev: Direction | None, out_w: Tensor, out_b: Tensor | None, strategy: str = "add",
                combine: bool = True, workspace: dict | None = None) -> None:  # fmt: skip
    """Inference of a BiMamba pair that shares in_proj and out_proj, (B, L, d_model) -> out (B, L, d_model):
        out = mixer_fwd(h) (+ | *) flip_L(mixer_rev(flip_L(h)))
    without flipping anything: in_proj is position-wise, so both directions read one xz = in_proj(h), the reversed
    mixer's conv and scan run backwards over it (kernel indexing), and with "add" the two gated scan outputs are
    summed before one out_proj (out_proj(a) + out_proj(b) = out_proj(a + b), bias counted twice). `fwd` or `rev`
    may be None (one direction only). h and out may be strided views of a wider stream (contiguous channels), and
    out may be h itself: each group of sequences is read whole (in_proj) before its output is written.
    Memory: xz (G, L, 2 D_in) for a group of G = max(1, FWD_TILE // L) sequences, and with combine=True (and "add")
    the summed output (G, L, D_in); combine=False applies out_proj per direction instead (no (L, D_in) buffer).
    `workspace`: a dict in which the work buffers are kept between calls (e.g. the layers of one model forward)."""
    Bt, L, _ = h.shape
    sd = K.storage_dtype(h)
    d2 = in_w.shape[0]
    d_inner = d2 // 2
    w_in, b_in = in_w.detach().to(sd), None if in_b is None else in_b.detach().to(sd)
    w_out, b_out = out_w.detach().to(sd), None if out_b is None else out_b.detach().to(sd)
    dirs = [(d, rev_) for d, rev_ in ((fwd, False), (rev, True)) if d is not None]
    combine = combine and strategy == "add" and len(dirs) == 2
    if combine and b_out is not None:
        b_out = 2 * b_out
    G = max(1, min(Bt, FWD_TILE // L))
    T = min(L, FWD_TILE)
    ct = K.compute_dtype(sd)
    xz_buf = _buffer(workspace, "xz", G * L * d2, sd)
    y_buf = _buffer(workspace, "y", G * L * d_inner, sd) if combine else None
    xs_buf = _buffer(workspace, "xs", G * T * d_inner, sd)
    xd_buf = _buffer(workspace, "xd", G * T * max(d.x_w.shape[0] for d, _ in dirs), sd)
    o_buf = _buffer(workspace, "o", G * T * w_out.shape[0], sd) if strategy != "add" and len(dirs) == 2 else None
    for b0 in range(0, Bt, G):
        g = min(G, Bt - b0)
        xz = xz_buf[: g * L * d2].view(g, L, d2)
        _mm_into(h[b0 : b0 + g], w_in, b_in, xz)  # (g, L, 2 D_in)
        y_all = y_buf[: g * L * d_inner].view(g, L, d_inner) if combine else None
        for i, (d, reverse) in enumerate(dirs):
            state = torch.zeros(g, d.N, d_inner, dtype=ct)
            starts = list(range(0, L, T))
            for t0 in reversed(starts) if reverse else starts:
                n = min(T, L - t0)
                xs = xs_buf[: g * n * d_inner].view(g, n, d_inner)
                xd = xd_buf[: g * n * d.x_w.shape[0]].view(g, n, -1)
                K.run_conv(xz, d.wT, d.cb, xs, t0, reverse=reverse)  # (g, n, D_in)
                torch.matmul(xs, d.x_w.t(), out=xd)  # (g, n, R + 2N)
                if combine:  # first direction writes, second adds; out_proj after the second
                    K.run_scan(d.p, xs, xd, d.rank, d.rank + d.N, xz, d_inner, y_all, z_t0=t0, h0=state,
                               out_t0=t0, reverse=reverse, mode=1 if i else 0)  # fmt: skip
                    if i:
                        _mm_into(y_all[:, t0 : t0 + n], w_out, b_out, out[b0 : b0 + g, t0 : t0 + n])
                    continue
                K.run_scan(d.p, xs, xd, d.rank, d.rank + d.N, xz, d_inner, xs, z_t0=t0, h0=state, reverse=reverse)
                o = out[b0 : b0 + g, t0 : t0 + n]
                if i == 0:
                    _mm_into(xs, w_out, b_out, o)
                elif strategy == "add":
                    _mm_into(xs, w_out, b_out, o, accumulate=True)
                else:
                    ot = o_buf[: g * n * w_out.shape[0]].view(g, n, -1)
                    _mm_into(xs, w_out, b_out, ot)
                    o.mul_(ot)
