"""Confound regressors from an fMRIPrep confounds table, through nilearn's load_confounds_strategy.

    confounds, sample_mask = load_confounds("sub-01_..._desc-confounds_timeseries.tsv", "scrubbing")
    # confounds (T, C) float64 or None; sample_mask (T',) int indices of the volumes kept, or None (all kept)

Strategies (nilearn.interfaces.fmriprep preset_strategies, Wang et al. 2024, "Continuous evaluation of denoising
strategies in resting-state fMRI connectivity using fMRIPrep and Nilearn"):
    none       no regression, no censoring
    simple     6 motion parameters + derivatives + squares (24), csf + white_matter (basic), cosine drift terms
    scrubbing  simple with csf/white_matter "full" (8), and volumes with FD > 0.5 mm or std DVARS > 1.5 censored
               (plus segments shorter than 5 volumes between them)
    compcor    24 motion terms, anatomical CompCor (combined mask, all components; needs the JSON sidecar), cosines
Every strategy also censors fMRIPrep's non-steady-state volumes. nilearn finds the table from a BOLD file name; the
manifest names the table itself, so it is linked under a fixed BIDS name into a temporary folder (with its JSON
sidecar) and nilearn reads it there: the file the manifest names is the file used.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from brain.errors import BrainInputError

STRATEGIES = ("none", "simple", "scrubbing", "compcor")
_STEM = "sub-x_task-rest"  # fixed BIDS stem for the temporary links


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise BrainInputError(f"confounds must be one of {' | '.join(STRATEGIES)}, got {strategy!r}")
    return strategy


def load_confounds(
    table: str | Path, strategy: str, n_volumes: int | None = None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(confounds (T, C) or None, sample_mask or None) of `strategy` from the confounds TSV `table`; n_volumes (the
    scan's) is checked against the table's rows. Errors name the table and what is missing."""
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    if check_strategy(strategy) == "none":
        return None, None
    table = Path(table)
    if not table.is_file():
        raise FileNotFoundError(f"confounds table not found: {table}")
    with tempfile.TemporaryDirectory(prefix="genobrain-confounds-") as tmp:
        os.symlink(table.absolute(), Path(tmp) / f"{_STEM}_desc-confounds_timeseries.tsv")
        sidecar = table.with_name(table.name[: -len(".tsv")] + ".json") if table.name.endswith(".tsv") else None
        if sidecar is not None and sidecar.is_file():
            os.symlink(sidecar.absolute(), Path(tmp) / f"{_STEM}_desc-confounds_timeseries.json")
        elif strategy == "compcor":
            raise BrainInputError(
                f"{table}: confounds=compcor needs the table's JSON sidecar ({sidecar}, CompCor masks)"
            )
        bold = str(Path(tmp) / f"{_STEM}_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # nilearn's notes on absent optional columns
                confounds, sample_mask = load_confounds_strategy(bold, denoise_strategy=strategy)
        except (ValueError, KeyError) as err:
            raise BrainInputError(
                f"{table}: cannot read confounds={strategy} from it ({err}); it needs fMRIPrep's columns (motion "
                f"trans_*/rot_* with derivatives, csf, white_matter, cosine*, framewise_displacement, std_dvars, "
                f"a_comp_cor_* for compcor), or choose another brain.transform.confounds"
            ) from err
    n = len(confounds)
    if n_volumes is not None and n != n_volumes:
        raise BrainInputError(f"{table}: {n} rows, but the scan has {n_volumes} volumes; one row per volume needed")
    values = confounds.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        bad = confounds.columns[~np.isfinite(values).all(axis=0)].tolist()
        raise BrainInputError(f"{table}: NaN in confound column(s) {bad[:5]} after nilearn's filling; check the table")
    return values, (None if sample_mask is None else np.asarray(sample_mask, dtype=int))
