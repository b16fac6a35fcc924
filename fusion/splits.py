"""Reproducible train/val/test splits for a manifest: stratified by site, families kept together. Library code.

    splits = assign_splits(ids, fractions=(0.7, 0.15, 0.15), seed=0, strata=sites, groups=family_ids)

Units are families (`groups`; a subject without one is its own unit), so twins and siblings never straddle splits
(their genomes are near-copies: a sibling in the test split would leak). Each unit belongs to the stratum most of its
members share (`strata`, e.g. site; ties: the first in sorted order). Units are shuffled within their stratum by one
generator seeded with `seed`, and the strata interleaved evenly (the j-th of k units of a stratum sits at (j + 0.5) /
k of the sequence: stratified systematic order). Walking that sequence, each unit goes to the split with the largest
deficit, its stratum's plus the whole cohort's (deficit = fraction x subjects placed so far, this unit included,
minus those in the split; ties: train, val, test): the fractions hold overall and within each stratum (within one
unit on 90 subjects, 3 sites, 20 sibling pairs; tests/test_manifest.py), and small strata still feed val and test.
Same inputs and seed -> same splits. sklearn has no grouped, stratified *shuffle* split with unequal fractions
(StratifiedGroupKFold needs >= n_splits groups per class), hence this small assignment.
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
    order = []  # (position in its stratum in [0, 1), stratum rank, stratum, unit): strata interleaved evenly
    for rank, stratum in enumerate(sorted(by_stratum)):
        keys = by_stratum[stratum]
        keys = [keys[j] for j in rng.permutation(len(keys))]
        order += [((j + 0.5) / len(keys), rank, stratum, key) for j, key in enumerate(keys)]
    order.sort(key=lambda t: (t[0], t[1]))
    out = [""] * n
    counts, placed = np.zeros(3), 0  # all strata
    s_counts, s_placed = defaultdict(lambda: np.zeros(3)), Counter()  # per stratum
    for _, _, stratum, key in order:
        size = len(units[key])
        placed += size
        s_placed[stratum] += size
        deficit = (f * s_placed[stratum] - s_counts[stratum]) + (f * placed - counts)  # (3,)
        split = int(np.argmax(deficit))
        counts[split] += size
        s_counts[stratum][split] += size
        for i in units[key]:
            out[i] = SPLITS[split]
    return out
