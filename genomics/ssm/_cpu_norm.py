"""Numba kernel of the pre-norm residual step of Caduceus blocks: residual add + RMSNorm / LayerNorm in one pass,
with the RCPS half swap folded into the indexing (no swapped, flipped or concatenated copies).

Rows of h and r are (W,) = nh halves of Dh channels (nh = 2 for an RCPS stream [fwd | rc], 1 otherwise):
    r[:]            = r + swap^s_add(h)       (has_res; else r = h)
    h[k*Dh:(k+1)*Dh] = norm_k(r[half (sel + k) % nh])     with norm_k's own weight / bias (w or flip(w) for RCPS)
h is overwritten by the normed stream (the mixer's input), r keeps the residual. RMSNorm: x * rsqrt(mean(x^2) + eps)
* w; LayerNorm: (x - mean) * rsqrt(var + eps) * w + b; statistics accumulated in float64 (a row is 128-512 values),
the rest in the compute dtype. bf16 storage is passed as int16 words (see _cpu_math.ld / st).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from genomics.ssm._cpu_math import ld, st

_JIT = dict(parallel=True, fastmath=True, cache=True, nogil=True)


@njit(**_JIT)
def add_norm(h, r, has_res, s_add, sel, nh, w, bvec, eps, rms, nseg):
    """h, r (M, W) rows; w, bvec (nh, Dh) in the compute dtype; see the module docstring."""
    M, W = h.shape
    Dh = W // nh
    seg = (M + nseg - 1) // nseg
    for job in prange(nseg):
        v = np.empty(Dh, w.dtype)
        sc = np.empty(2, w.dtype)  # (mean, 1 / std) in the compute dtype
        for i in range(job * seg, min(M, (job + 1) * seg)):
            hr, rr = h[i], r[i]
            if has_res:
                for k in range(nh):
                    src = (k + s_add) % nh
                    rk, hk = rr[k * Dh : (k + 1) * Dh], hr[src * Dh : (src + 1) * Dh]
                    for c in range(Dh):
                        st(rk, c, ld(rk, c) + ld(hk, c))
            else:
                for c in range(W):
                    st(rr, c, ld(hr, c))
            for k in range(nh):
                src = (k + sel) % nh
                rk, hk, wk, bk = rr[src * Dh : (src + 1) * Dh], hr[k * Dh : (k + 1) * Dh], w[k], bvec[k]
                s1 = 0.0
                s2 = 0.0
                for c in range(Dh):
                    x = ld(rk, c)
                    v[c] = x
                    s1 += np.float64(x)
                    s2 += np.float64(x) * np.float64(x)
                if rms:
                    sc[1] = s2 / Dh
                    sc[1] = 1 / np.sqrt(sc[1] + eps)
                    inv = sc[1]
                    for c in range(Dh):
                        st(hk, c, v[c] * inv * wk[c])
                else:
                    sc[0] = s1 / Dh
                    sc[1] = max(s2 / Dh - (s1 / Dh) ** 2, 0.0)
                    sc[1] = 1 / np.sqrt(sc[1] + eps)
                    mu, inv = sc[0], sc[1]
                    for c in range(Dh):
                        st(hk, c, (v[c] - mu) * inv * wk[c] + bk[c])
