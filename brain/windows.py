"""Windowing in time: one random window for training, a fixed set of evenly spaced windows for evaluation.

Evaluation windows depend only on the scan length, so embeddings are reproducible; encoders average their embeddings.
"""

from __future__ import annotations

import numpy as np

from brain.errors import BrainInputError


def window_starts(
    n_frames: int, window: int | None, *, train: bool, n_eval_windows: int, rng, source: str
) -> list[int]:
    """Start frames of the windows to cut from a scan of `n_frames` frames (`source` names the file in errors)."""
    if window is None:
        return [0]
    if n_frames < window:
        raise BrainInputError(
            f"{source}: scan has {n_frames} frames but the encoder needs windows of {window}; "
            f"exclude this subject or lower the window length"
        )
    last = n_frames - window
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        return [int(rng.integers(0, last + 1))]
    if n_eval_windows <= 1:
        return [last // 2]
    return [int(round(s)) for s in np.linspace(0, last, n_eval_windows)]


def cut_windows(
    series: np.ndarray, window: int | None, *, train: bool, n_eval_windows: int, rng, source: str
) -> np.ndarray:
    """(T, ...) series -> (W, window, ...) windows along the first (time) axis, starts from window_starts."""
    starts = window_starts(
        series.shape[0], window, train=train, n_eval_windows=n_eval_windows, rng=rng, source=source
    )
    length = series.shape[0] if window is None else window
    return np.stack([series[s : s + length] for s in starts])
