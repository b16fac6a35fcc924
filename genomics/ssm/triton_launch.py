"""Whether the Triton backend can run, and on which tensors (issue 14). Imports nothing from triton itself.

Triton kernels run on CUDA tensors, or on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1 set before
triton is imported: how the tests check the kernels without a GPU; slow, small shapes only).
"""

from __future__ import annotations

import functools
import importlib.util
import os

from torch import Tensor


@functools.cache
def available() -> bool:
    """Whether the triton package is installed (not imported here)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton's interpreter is on (kernels run in numpy on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def device_ok(device_type: str) -> bool:
    """Whether tensors on `device_type` can go to the Triton kernels."""
    return device_type == "cuda" or (device_type == "cpu" and interpreting())


def check_tensors(*tensors: Tensor | None) -> None:
    """Raise a clear error when triton is missing or a tensor cannot go to the kernels."""
    if not available():
        raise RuntimeError("SSM backend 'triton' needs the triton package (pip install triton); use backend='auto'")
    for t in tensors:
        if t is not None and not device_ok(t.device.type):
            raise RuntimeError(
                f"SSM backend 'triton' needs CUDA tensors (got {t.device}; CPU tensors only under TRITON_INTERPRET=1)"
            )


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)
