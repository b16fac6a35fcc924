"""Scalar math for the numba CPU kernels, written so that LLVM's loop vectoriser turns it into SIMD code.

Why not `math.exp`: numba lowers it to a libm call, which does not vectorise on this machine (no SVML), so a scan
that needs d_state exponentials per (token, channel) runs 8-15x slower with it. Instead:

* `vexp2(x)` = 2**x: k = rint(x), f = x - k (exact, |f| <= 1/2), 2**f by a degree-6 polynomial, then 2**k is added
  to the exponent bits. The scan calls it with A pre-scaled by log2(e), so its range reduction has no rounding at all.
  Coefficients: relative-error minimax fit of 2**f on [-1/2, 1/2] (Lawson-weighted least squares in float64, c0 pinned
  to 1 so that 2**0 == 1 exactly); algebraic error 2.6e-9, with float32 Horner rounding 1.0e-7 relative (<= 1 ulp).
* `vexp(x)` = e**x: Cody-Waite reduction r = x - k ln2 with ln2 split in two float32 constants; both steps are
  explicit fma intrinsics, so `fastmath` (re-association) cannot fold the two constants back into one, which would
  triple the error. Then 2**(r log2 e) by the same polynomial. Relative error ~1.2e-7 over the whole float range.
* `vlog1p01(e)` = log(1 + e) for e in [0, 1] (softplus): 2 atanh(s) with s = e / (2 + e) <= 1/3, odd series to s**15
  (truncation < 2e-9 relative).

Inputs are clamped to [-125, 127] (powers of two), so results stay normal floats; NaN propagation is not guaranteed
(the kernels run with fastmath). For float64 arrays (used by gradcheck in the tests) the generic helpers fall back to
libm (`math.exp`, `math.log1p`): exact but scalar.

Storage types: activations may be float32, float64 or bfloat16; numpy has no bfloat16, so bf16 tensors are passed as
int16 views and `ld`/`st` convert (bf16 -> f32 is a 16-bit shift; f32 -> bf16 rounds to nearest even).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload, register_jitable

LOG2E = 1.4426950408889634
LN2_HI = 0.693145751953125  # float32 with 16 trailing zero bits, so k * LN2_HI is exact for |k| < 2**8
LN2_LO = 1.4286067653302226e-06  # ln 2 - LN2_HI
_P0, _P1, _P2, _P3 = 1.0, 0.6931471824645996, 0.24022646248340607, 0.05550328642129898
_P4, _P5, _P6 = 0.009618489071726799, 0.0013399930903688073, 0.0001534580223960802

# ---------------------------------------------------------------------------------------------------- LLVM intrinsics


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c with one rounding (llvm.fma); never split or re-associated by fastmath."""
    sig = a(a, b, c)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


@intrinsic
def _f32_as_i32(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def _i32_as_f32(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


# ------------------------------------------------------------------------------------------------- float32 functions


@register_jitable
def _pow2_poly(f):
    """2**f for |f| <= 1/2 (and a little beyond)."""
    p = np.float32(_P6)
    p = fma(p, f, np.float32(_P5))
    p = fma(p, f, np.float32(_P4))
    p = fma(p, f, np.float32(_P3))
    p = fma(p, f, np.float32(_P2))
    p = fma(p, f, np.float32(_P1))
    return fma(p, f, np.float32(_P0))  # in [0.70, 1.42]


@register_jitable
def _times_pow2(p, k):
    """p * 2**k for integral float k, by adding k to the exponent bits (p normal, result normal)."""
    return _i32_as_f32(_f32_as_i32(p) + (np.int32(k) << np.int32(23)))


@register_jitable
def _exp2_f32(x):
    x = min(max(x, np.float32(-125.0)), np.float32(127.0))
    k = np.rint(x)
    return _times_pow2(_pow2_poly(x - k), k)  # x - k is exact, in [-1/2, 1/2]


@register_jitable
def _exp_f32(x):
    x = min(max(x, np.float32(-86.0)), np.float32(88.0))  # keeps k in [-125, 127]
    k = np.rint(x * np.float32(LOG2E))
    r = fma(-k, np.float32(LN2_HI), x)
    r = fma(-k, np.float32(LN2_LO), r)  # x - k ln2, |r| <= ln2 / 2 (+ tiny)
    return _times_pow2(_pow2_poly(r * np.float32(LOG2E)), k)


@register_jitable
def _log1p01_f32(e):
    s = e / (np.float32(2.0) + e)
    s2 = s * s
    p = np.float32(1.0 / 15.0)
    p = fma(p, s2, np.float32(1.0 / 13.0))
    p = fma(p, s2, np.float32(1.0 / 11.0))
    p = fma(p, s2, np.float32(1.0 / 9.0))
    p = fma(p, s2, np.float32(1.0 / 7.0))
    p = fma(p, s2, np.float32(1.0 / 5.0))
    p = fma(p, s2, np.float32(1.0 / 3.0))
    p = fma(p, s2, np.float32(1.0))
    return np.float32(2.0) * s * p


# --------------------------------------------------------------------------- dtype-generic helpers used by the kernels


def vexp2(x):
    """2**x (vectorisable for float32)."""
    return 2.0**x


def vexp(x):
    """e**x (vectorisable for float32)."""
    return math.exp(x)


def vlog1p01(e):
    """log(1 + e) for 0 <= e <= 1 (vectorisable for float32)."""
    return math.log1p(e)


@overload(vexp2)
def _ov_vexp2(x):
    if x == types.float32:
        return lambda x: _exp2_f32(x)
    return lambda x: math.exp(x * 0.6931471805599453)


@overload(vexp)
def _ov_vexp(x):
    if x == types.float32:
        return lambda x: _exp_f32(x)
    return lambda x: math.exp(x)


@overload(vlog1p01)
def _ov_vlog1p01(e):
    if e == types.float32:
        return lambda e: _log1p01_f32(e)
    return lambda e: math.log1p(e)


def softplus(x):
    """log(1 + e**x), computed as max(x, 0) + log1p(e**-|x|) (no overflow, no threshold)."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def sigmoid(x):
    """1 / (1 + e**-x) from e**-|x| (no overflow)."""
    e = math.exp(-abs(x))
    return 1 / (1 + e) if x >= 0 else e / (1 + e)


def _typed_one(x):
    return np.float32(1.0) if x == types.float32 else 1.0


@overload(softplus)
def _ov_softplus(x):
    zero = _typed_one(x) * 0

    def impl(x):
        return max(x, zero) + vlog1p01(vexp(-abs(x)))

    return impl


@overload(sigmoid)
def _ov_sigmoid(x):
    one, zero = _typed_one(x), _typed_one(x) * 0

    def impl(x):
        e = vexp(-abs(x))  # in (0, 1]
        s = one / (one + e)
        return s if x >= zero else e * s

    return impl


# ----------------------------------------------------------------------------------- storage loads / stores (bf16)
# The kernels index 1-D row views (x[b, t, c0:c0 + w]) with a loop counter: an index that LLVM cannot prove
# non-negative (c0 + c) gets numba's negative-index wraparound, which turns vector loads into gathers.


def ld(a, i):
    """a[i] as the compute type (bf16 storage, passed as int16 words, is widened to float32)."""
    return a[i]


def st(a, i, v):
    """a[i] = v, rounded to the storage type."""
    a[i] = v


@overload(ld)
def _ov_ld(a, i):
    if a.dtype == types.int16:

        def impl(a, i):
            return _i32_as_f32(np.int32(a[i]) << np.int32(16))

        return impl
    return lambda a, i: a[i]


@overload(st)
def _ov_st(a, i, v):
    if a.dtype == types.int16:

        def impl(a, i, v):
            b = _f32_as_i32(np.float32(v))
            b = b + np.int32(0x7FFF) + ((b >> np.int32(16)) & np.int32(1))  # round to nearest even
            a[i] = np.int16(b >> np.int32(16))

        return impl

    def impl(a, i, v):
        a[i] = v

    return impl
