"""Windowing in time: one random window for training, a fixed set of evenly spaced windows for evaluation.

Evaluation windows depend only on the scan length, so embeddings are reproducible; encoders average their embeddings.
Several runs of a subject (cut_run_windows): windows are drawn from all of them, never across a run boundary.
Batching (collate_windows): whole-scan windows (`window=None`) keep each subject's own retained volumes, so their
lengths differ within a batch (runs of different lengths, volumes censored by scrubbing); shorter ones are padded at
the end of the time axis with NaN frames, which brain.connectivity.FunctionalConnectivity skips (no data cropped).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

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
    starts = window_starts(series.shape[0], window, train=train, n_eval_windows=n_eval_windows, rng=rng, source=source)
    length = series.shape[0] if window is None else window
    return np.stack([series[s : s + length] for s in starts])


def cut_run_windows(
    runs: list[np.ndarray], window: int | None, *, train: bool, n_eval_windows: int, rng, source: str
) -> np.ndarray:
    """A subject's runs, each (T_r, ...), -> (W, window, ...) windows that never cross a run boundary.

    One run: cut_windows. Several: the valid start frames of all runs long enough form one list in run order;
    training draws one start uniformly from it, evaluation takes n_eval_windows evenly spaced entries (so W stays
    n_eval_windows whatever the number of runs, and batches collate). window None: the runs concatenated (W = 1)."""
    if len(runs) == 1:
        return cut_windows(runs[0], window, train=train, n_eval_windows=n_eval_windows, rng=rng, source=source)
    if window is None:
        return np.concatenate(runs, axis=0)[None]
    starts = [(r, s) for r, x in enumerate(runs) for s in range(x.shape[0] - window + 1)]
    if not starts:
        longest = max(x.shape[0] for x in runs)
        raise BrainInputError(
            f"{source}: no run has {window} frames (longest {longest}); exclude this subject or lower the window length"
        )
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        picks = [starts[int(rng.integers(0, len(starts)))]]
    elif n_eval_windows <= 1:
        picks = [starts[(len(starts) - 1) // 2]]
    else:
        picks = [starts[int(round(i))] for i in np.linspace(0, len(starts) - 1, n_eval_windows)]
    return np.stack([runs[r][s : s + window] for r, s in picks])


def collate_windows(items: Sequence[torch.Tensor], time_axis: int = 1) -> torch.Tensor:
    """Transform outputs, each (W, T_i, ...), -> (B, W, max T_i, ...): torch.stack when all T_i are equal, else the
    shorter ones padded after their last frame with NaN frames (every value NaN). Other axes must agree."""
    lengths = [x.shape[time_axis] for x in items]
    rest = {tuple(s for a, s in enumerate(x.shape) if a != time_axis) for x in items}
    if len(rest) > 1:
        shapes = sorted({tuple(x.shape) for x in items})
        raise ValueError(
            f"brain inputs of one batch differ in more than their length in time (axis {time_axis}): shapes {shapes}"
        )
    longest = max(lengths)
    if min(lengths) == longest:
        return torch.stack(list(items))
    if not items[0].is_floating_point():
        raise TypeError(f"NaN padding needs floating-point brain inputs, got {items[0].dtype}")
    out = items[0].new_full((len(items), *items[0].shape[:time_axis], longest, *items[0].shape[time_axis + 1 :]),
                            float("nan"))  # fmt: skip
    for i, x in enumerate(items):
        out[i].narrow(time_axis, 0, x.shape[time_axis]).copy_(x)
    return out
