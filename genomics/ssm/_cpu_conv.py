"""Numba kernels of Mamba's depthwise causal conv1d + SiLU (mamba_ssm / causal-conv1d semantics), time-major.

Forward:  xs[b, t, c] = silu(bias[c] + sum_k w[k, c] * x[b, t - (K-1) + k, c])   (x read in place from xz at x_off)
Backward: with g = dL/dxs * silu'(xc) recomputed from x,
          dx[t] = sum_k w[k] g[t + (K-1) - k],  dw[k] = sum_t g[t] x[t - (K-1) + k],  dbias = sum_t g[t].
Jobs are (batch, segment of time); the innermost loops run over channels (SIMD). No transpose of xz is needed: the
reference's F.conv1d on a (B, D, L) view costs two layout changes that this replaces.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from genomics.ssm._cpu_math import ld, sigmoid, st

TB = 64  # time rows per tile in the backward (a (TB + K - 1, D) buffer)
_JIT = dict(parallel=True, fastmath=True, cache=True, nogil=True)


@njit(**_JIT)
def conv_silu_fwd(xz, x_off, t0, wT, bias, xs, nseg, reverse):
    """xs[b, t] = silu(causal_conv(x))[b, t0 + t] for the T rows of xs (B, T, D); wT (K, D), bias (D,) in the
    compute dtype; `nseg` parallel time segments per batch. reverse: the conv of the time-reversed sequence, read
    back in forward order (anti-causal, taps mirrored: x[t + (K-1) - k], zero past the last row of xz)."""
    Bt, T, D = xs.shape
    seg = (T + nseg - 1) // nseg
    for job in prange(Bt * nseg):
        b, s = job // nseg, job % nseg
        acc = np.empty(D, wT.dtype)
        for t in range(s * seg, min(T, (s + 1) * seg)):
            if reverse:
                _conv_row_rev(xz, x_off, wT, bias, b, t0 + t, acc)
            else:
                _conv_row(xz, x_off, wT, bias, b, t0 + t, acc)
            out = xs[b, t]
            for c in range(D):
                st(out, c, acc[c] * sigmoid(acc[c]))


@njit(cache=True, nogil=True, fastmath=True)
def _conv_row(xz, x_off, wT, bias, b, t, acc):
    """acc = bias + sum_k wT[k] * x[b, t - (K-1) + k] (causal, zero left padding): the pre-activation at t."""
    K, D = wT.shape
    for c in range(D):
        acc[c] = bias[c]
    for k in range(max(0, K - 1 - t), K):
        xr = xz[b, t - (K - 1) + k, x_off : x_off + D]
        for c in range(D):
            acc[c] += wT[k, c] * ld(xr, c)


@njit(cache=True, nogil=True, fastmath=True)
def _conv_row_rev(xz, x_off, wT, bias, b, t, acc):
    """acc = bias + sum_k wT[k] * x[b, t + (K-1) - k] (zero past the end): the reversed sequence's pre-activation."""
    K, D = wT.shape
    L = xz.shape[1]
    for c in range(D):
        acc[c] = bias[c]
    for k in range(max(0, t + K - L), K):
        xr = xz[b, t + (K - 1) - k, x_off : x_off + D]
        for c in range(D):
            acc[c] += wT[k, c] * ld(xr, c)


@njit(**_JIT)
def conv_silu_bwd(xz, x_off, wT, bias, dxs, dx, dx_off, dw_part, db_part):
    """dx[b, t, dx_off + c] = grad w.r.t. x; dw_part (J, K, D) and db_part (J, D): per-job sums (J = B * nseg)."""
    Bt, L, D = dxs.shape
    K = wT.shape[0]
    nseg = dw_part.shape[0] // Bt
    seg = (L + nseg - 1) // nseg
    one = np.ones(1, wT.dtype)[0]
    for job in prange(Bt * nseg):
        b, s = job // nseg, job % nseg
        g = np.empty((TB + K - 1, D), wT.dtype)  # g[i] = dL/dxc at t0 + i
        acc = np.empty(D, wT.dtype)
        dw, db = dw_part[job], db_part[job]  # (K, D), (D,)
        dw[:, :] = 0
        db[:] = 0
        end = min(L, (s + 1) * seg)
        for t0 in range(s * seg, end, TB):
            t1 = min(t0 + TB, end)
            for i in range(min(t1 + K - 1, L) - t0):  # g for t0 .. t1 + K - 2 (the rows dx[t0 : t1] needs)
                _conv_row(xz, x_off, wT, bias, b, t0 + i, acc)
                gr = dxs[b, t0 + i]
                for c in range(D):
                    sg = sigmoid(acc[c])
                    g[i, c] = ld(gr, c) * sg * (one + acc[c] * (one - sg))
            for t in range(t0, t1):
                i = t - t0
                for c in range(D):
                    db[c] += g[i, c]
                for k in range(max(0, K - 1 - t), K):
                    xr = xz[b, t - (K - 1) + k, x_off : x_off + D]
                    for c in range(D):
                        dw[k, c] += g[i, c] * ld(xr, c)
                for c in range(D):
                    acc[c] = 0
                for k in range(max(0, t + K - L), K):  # g[t + (K-1) - k] exists while t + (K-1) - k < L
                    for c in range(D):
                        acc[c] += wT[k, c] * g[i + (K - 1) - k, c]
                dxr = dx[b, t, dx_off : dx_off + D]
                for c in range(D):
                    st(dxr, c, acc[c])
