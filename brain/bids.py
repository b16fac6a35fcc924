"""fMRIPrep derivatives in BIDS layout: find each subject's preprocessed BOLD runs and their companions.

    runs, notes = find_bold_runs(deriv_dir, space="MNI152NLin2009cAsym", task="rest")
    runs, notes = find_bold_runs(deriv_dir, space="fsLR", den="91k")   # CIFTI-2 dense series (--cifti-output)

Plain pattern matching on BIDS file names (BIDS 1.9 / fMRIPrep >= 20.2 naming; no pybids, which would add a SQL
index and a dozen dependencies for what four glob patterns do):
    bold       sub-<L>/[ses-<S>/]func/sub-<L>[_ses-<S>]_task-<T>[_acq-..][_run-<R>]..._space-<SPACE>[_res-..]
               _desc-preproc_bold.nii.gz; or, in a CIFTI space (CIFTI_SPACES: fMRIPrep's `--cifti-output`, HCP
               grayordinates), ..._space-fsLR_den-<D>_bold.dtseries.nii (no desc entity; parcellated with a
               .dlabel.nii atlas by brain.cifti)
    confounds  the same entities without space/res/den, `desc-confounds_timeseries.tsv` (fMRIPrep < 20.2:
               `desc-confounds_regressors.tsv`), its JSON sidecar beside it (needed by CompCor); a volume run and
               the CIFTI run of the same acquisition share it
    mask       the same entities as the BOLD, `desc-brain_mask.nii.gz` (volumes only: grayordinates need none)
    t_r        RepetitionTime of the BOLD's JSON sidecar (`..._bold.json`, `..._bold.dtseries.json`), else the
               header (NIfTI pixdim[4], ms converted to s; CIFTI: the series axis step)
Runs are ordered by (session, run number, remaining entities); the first is a subject's "first run". Library code:
no fusion import.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from brain.errors import BrainInputError

SPACELESS = ("space", "res", "den", "cohort")  # entities the confounds table does not carry
CIFTI_SPACES = ("fsLR",)  # output spaces written as CIFTI-2 dense series (fMRIPrep's --cifti-output; HCP)
SUFFIXES = {"volume": ("bold.nii.gz", "bold.nii"), "cifti": ("bold.dtseries.nii",)}  # BOLD file suffixes per kind
_ENTITY = re.compile(r"^([a-zA-Z0-9]+)-([a-zA-Z0-9]+)$")


@dataclass(frozen=True)
class BoldRun:
    subject: str  # BIDS label with its prefix, e.g. "sub-0001"
    entities: dict  # key -> value of the BOLD file name (sub, ses, task, acq, run, space, res, desc, ...)
    bold: Path  # the preprocessed 4D NIfTI, or CIFTI-2 dense series (.dtseries.nii)
    confounds: Path | None  # fMRIPrep's confounds table (None when absent)
    mask: Path | None  # the run's brain mask in the same space (None when absent, and for CIFTI)
    t_r: float | None  # repetition time in seconds (sidecar, else header; None when neither has it)

    @property
    def sort_key(self) -> tuple:
        run = self.entities.get("run", "")
        number = int(run) if run.isdigit() else -1
        rest = tuple(sorted((k, v) for k, v in self.entities.items() if k not in ("sub", "ses", "run")))
        return (self.entities.get("ses", ""), number, run, rest)


def parse_entities(name: str) -> tuple[dict, str]:
    """BIDS file name -> ({entity: value}, suffix with extension), e.g. ({"sub": "01", "task": "rest"}, "bold.nii.gz");
    ({}, name) when the name is not in BIDS form."""
    parts = name.split("_")
    entities = {}
    for part in parts[:-1]:
        m = _ENTITY.match(part)
        if not m:
            return {}, name
        entities[m[1]] = m[2]
    return entities, parts[-1]


def _name(entities: dict, suffix: str) -> str:
    return "_".join([f"{k}-{v}" for k, v in entities.items()] + [suffix])


def repetition_time(bold: Path) -> float | None:
    """Seconds between volumes: the JSON sidecar's RepetitionTime, else the header (NIfTI pixdim[4]; CIFTI: the
    series axis step); None if neither has it."""
    sidecar = bold.with_name(bold.name.replace(".nii.gz", ".json").replace(".nii", ".json"))
    if sidecar.is_file():
        try:
            value = json.loads(sidecar.read_text()).get("RepetitionTime")
        except (OSError, ValueError) as err:
            raise BrainInputError(f"{sidecar}: not a readable JSON sidecar ({err})") from err
        if value is not None:
            return float(value)
    import nibabel as nib

    if bold.name.lower().endswith(".dtseries.nii"):
        from brain.cifti import cifti_shape

        return cifti_shape(bold)[1]
    header = nib.load(str(bold)).header
    zooms = header.get_zooms()
    if len(zooms) < 4 or not zooms[3] > 0:
        return None
    unit = header.get_xyzt_units()[1]
    return float(zooms[3]) / 1000.0 if unit == "msec" else float(zooms[3])


def find_bold_runs(
    deriv_dir: str | Path,
    space: str = "MNI152NLin2009cAsym",  # output space of the BOLD (fMRIPrep's --output-spaces)
    task: str = "rest",  # BIDS task label
    res: str | None = None,  # resolution entity (`res-2`) when fMRIPrep wrote several; None = any, but only one
    den: str | None = None,  # density entity of CIFTI outputs (`den-91k`, `den-170k`); None = any, but only one
) -> tuple[list[BoldRun], list[str]]:
    """Every preprocessed BOLD run of `task` in `space` under deriv_dir (4D NIfTI, or CIFTI-2 dense series when
    `space` is in CIFTI_SPACES), sorted by subject then run order, and notes (missing confounds/mask, ambiguous
    resolutions). Raises BrainInputError when deriv_dir holds none."""
    root = Path(deriv_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"fMRIPrep derivatives folder not found: {root}")
    kind = "cifti" if space in CIFTI_SPACES else "volume"
    pattern = f"*_task-{task}_*space-{space}_*" + ("bold.dtseries.nii" if kind == "cifti" else "desc-preproc_bold.nii*")
    files = sorted({*root.glob(f"sub-*/func/{pattern}"), *root.glob(f"sub-*/ses-*/func/{pattern}")})
    runs, notes, seen = [], [], {}
    pick = "den=<label> (e.g. den=91k)" if kind == "cifti" else "res=<label>"
    for bold in files:
        entities, suffix = parse_entities(bold.name)
        if suffix not in SUFFIXES[kind] or entities.get("task") != task or entities.get("space") != space:
            continue  # e.g. task-restx, a space prefix match
        if (res is not None and entities.get("res") != res) or (den is not None and entities.get("den") != den):
            continue
        key = tuple((k, v) for k, v in entities.items() if k not in ("res", "den"))
        if key in seen:
            raise BrainInputError(
                f"{bold}: fMRIPrep wrote this run in several resolutions ({seen[key].name} too); pick one with {pick}"
            )
        seen[key] = bold
        confounds = None
        base = {k: v for k, v in entities.items() if k not in SPACELESS and k != "desc"}
        for suffix in ("timeseries.tsv", "regressors.tsv"):  # fMRIPrep >= 20.2, older
            candidate = bold.with_name(_name(base, f"desc-confounds_{suffix}"))
            if candidate.is_file():
                confounds = candidate
                break
        mask = None
        if kind == "volume":
            mask_entities = {k: v for k, v in entities.items() if k != "desc"}
            mask = bold.with_name(_name(mask_entities, "desc-brain_mask.nii.gz"))
            mask = mask if mask.is_file() else None
            if mask is None:
                notes.append(f"{bold}: no brain mask (desc-brain_mask.nii.gz) beside it")
        subject = f"sub-{entities['sub']}"
        if confounds is None:
            notes.append(f"{bold}: no confounds table (desc-confounds_timeseries.tsv) beside it")
        runs.append(BoldRun(subject, entities, bold, confounds, mask, repetition_time(bold)))
    if not runs:
        raise BrainInputError(
            f"{root}: no preprocessed BOLD matching sub-*/[ses-*/]func/{pattern}; check task= and space= (the "
            f"derivatives' file names show them; space=fsLR finds fMRIPrep's --cifti-output dense series) or point "
            f"bids= at the fMRIPrep output folder"
        )
    runs.sort(key=lambda r: (r.subject, r.sort_key))
    return runs, notes
