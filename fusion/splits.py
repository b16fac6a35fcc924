"""Reproducible train/val/test splits for a manifest: stratified by site, families kept together. Library code.

    splits = assign_splits(ids, fractions=(0.7, 0.15, 0.15), seed=0, strata=sites, groups=family_ids)

Units are families (`groups`; a subject without one is its own unit), so twins and siblings never straddle splits
(their genomes are near-copies: a sibling in the test split would leak). Each unit belongs to the stratum most of its
members share (`strata`, e.g. site; ties: the first in sorted order). Within each stratum (sorted), units are shuffled
by one generator seeded with `seed`, larger units placed first (stable), and each goes to the split furthest below its
target share of that stratum (target = fraction x subjects placed so far, including this unit; ties: train, val,
test). Same inputs and seed -> same splits; fractions hold per stratum to within one unit. sklearn offers no grouped,
stratified *shuffle* split with unequal fractions (StratifiedGroupKFold needs >= n_splits groups per class), hence
this small greedy assignment.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "val", "test")  # the one list of split names (fusion.cohort re-exports it)


def assign_splits(
    ids: Sequence[str],  # subject ids (unique)
    fractions: Sequence[float] = (0.7, 0.15, 0.15),  # train / val / test shares (normalised)
    seed: int = 0,  # seeds the shuffling of units within strata
    strata: Sequence | None = None,  # per subject, e.g. site (None / NaN: one stratum "")
    groups: Sequence | None = None,  # per subject, e.g. family_id (None / NaN / "": the subject alone)
) -> list[str]:
    """One split name per id, in the order of `ids` (module docstring)."""
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or (f < 0).any() or f.sum() <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers (train, val, test), got {fractions}")
    f = f / f.sum()
    n = len(ids)
    if len(set(ids)) != n:
        raise ValueError("subject ids must be unique to assign splits")

    def text(values, i):
        if values is None:
            return ""
        v = values[i]
        return "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip()

    units: dict[str, list[int]] = defaultdict(list)  # unit key -> member positions
    for i in range(n):
        family = text(groups, i)
        units[f"family:{family}" if family else f"subject:{ids[i]}"].append(i)
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for key in sorted(units):
        counts = Counter(text(strata, i) for i in units[key])
        top = max(counts.values())
        by_stratum[min(s for s, c in counts.items() if c == top)].append(key)
    rng = np.random.default_rng(seed)
    out = [""] * n
    for stratum in sorted(by_stratum):
        keys = by_stratum[stratum]
        keys = [keys[j] for j in rng.permutation(len(keys))]
        keys.sort(key=lambda k: -len(units[k]))  # stable: shuffled order within a size
        counts, placed = np.zeros(3), 0
        for key in keys:
            size = len(units[key])
            placed += size
            split = int(np.argmax(f * placed - counts))
            counts[split] += size
            for i in units[key]:
                out[i] = SPLITS[split]
    return out
