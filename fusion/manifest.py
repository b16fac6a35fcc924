"""Write a cohort manifest from fMRIPrep derivatives: `python -m fusion.manifest bids=DERIV_DIR out=manifest.csv
[space=MNI152NLin2009cAsym|fsLR] [task=rest] [res=LABEL] [den=LABEL] [participants=participants.tsv] [runs=first|all]
[split_seed=0] [split_fractions=0.7,0.15,0.15]` (kb/cohort-format.md, "From fMRIPrep derivatives").

    table, notes = build_manifest(bids, out, ...)   # library: the manifest as a DataFrame (paths relative to out)
    write_table(table, out)                          # atomically (temp file in out's folder, then rename)

One row per subject (BIDS label with its `sub-` prefix, as the VCF's sample names): `fmri` the preprocessed BOLD
(brain.bids.find_bold_runs), `confounds` its fMRIPrep confounds table, `mask` its brain mask, `t_r` its repetition
time (s). space=fsLR finds fMRIPrep's CIFTI-2 dense series (`..._space-fsLR_den-91k_bold.dtseries.nii`; den= picks
one density when there are several): `fmri` points at them, there is no `mask` column, and the cohort needs a
.dlabel.nii atlas on the same grayordinates (data.atlas). runs=first keeps each subject's first run (session, then
run number); runs=all keeps every run, `;`-joined in that order in `fmri`, `confounds` and `mask` (the brain
transforms draw windows from all of them). Covariates are
copied from participants.tsv (default: <bids>/participants.tsv when it exists; BIDS `n/a` = missing), except its
`participant_id`; a `split` column there is kept as given, otherwise splits come from fusion.splits.assign_splits
(stratified by `site` when that column exists, `family_id` keeps families in one split), reproducible with
split_seed. Exit status 0 written, 2 the command or the derivatives are wrong (message, no traceback).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

from brain.bids import find_bold_runs
from brain.scans import RUN_SEP
from fusion.errors import USER_ERRORS, FusionInputError
from fusion.splits import SPLITS, assign_splits

USAGE = __doc__.split("\n\n")[0]
OPTIONS = {  # key -> default (None: optional, no default); `bids` and `out` are required
    "bids": None, "out": None, "space": "MNI152NLin2009cAsym", "task": "rest", "res": None, "den": None,
    "participants": None,
    "runs": "first", "split_seed": "0", "split_fractions": "0.7,0.15,0.15",
}  # fmt: skip


def read_participants(path: Path) -> pd.DataFrame:
    """participants.tsv (BIDS: tab-separated, `participant_id` with the `sub-` prefix, `n/a` = missing), indexed by
    participant_id; ids without the prefix get it."""
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, na_values=["n/a", ""], keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise FusionInputError(f"{path}: not a readable participants table ({err})") from err
    table.columns = [str(c).strip() for c in table.columns]
    if "participant_id" not in table.columns:
        raise FusionInputError(f"{path}: no participant_id column (BIDS participants.tsv), got {list(table.columns)}")
    ids = table["participant_id"].str.strip()
    ids = ids.where(ids.str.startswith("sub-"), "sub-" + ids)
    dup = sorted(ids[ids.duplicated()].unique())
    if dup:
        raise FusionInputError(f"{path}: duplicate participant_id {dup[:5]}; each participant needs one row")
    table = table.drop(columns="participant_id")
    table.index = ids
    for col in table.columns:
        try:
            table[col] = pd.to_numeric(table[col])
        except (ValueError, TypeError):
            pass  # a text covariate
    return table


def build_manifest(
    bids: str | Path,  # fMRIPrep derivatives folder
    out: str | Path,  # where the manifest will be written (paths in it are relative to its folder)
    space: str = "MNI152NLin2009cAsym",  # BOLD output space
    task: str = "rest",  # BIDS task label
    res: str | None = None,  # resolution entity, when fMRIPrep wrote several
    den: str | None = None,  # density entity of CIFTI outputs (space=fsLR), when fMRIPrep wrote several
    participants: str | Path | None = None,  # participants.tsv; None = <bids>/participants.tsv if present
    runs: str = "first",  # "first" | "all"
    split_seed: int = 0,  # seeds assign_splits
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),  # train / val / test
) -> tuple[pd.DataFrame, list[str]]:
    """(manifest table, notes to print): module docstring."""
    if runs not in ("first", "all"):
        raise FusionInputError(f"runs must be 'first' or 'all', got {runs!r}")
    found, notes = find_bold_runs(bids, space=space, task=task, res=res, den=den)
    base = Path(out).expanduser().absolute().parent

    def rel(path) -> str:
        return "" if path is None else os.path.relpath(Path(path).absolute(), base)

    by_subject: dict[str, list] = {}
    for run in found:
        by_subject.setdefault(run.subject, []).append(run)
    rows = []
    for subject, items in by_subject.items():
        kept = items if runs == "all" else items[:1]
        t_rs = {r.t_r for r in kept}
        if len(t_rs) > 1:
            notes.append(f"{subject}: runs have different repetition times {sorted(t_rs)}; t_r lists the first")
        rows.append(
            {
                "subject_id": subject,
                "fmri": RUN_SEP.join(rel(r.bold) for r in kept),
                "confounds": RUN_SEP.join(rel(r.confounds) for r in kept) if any(r.confounds for r in kept) else "",
                "mask": RUN_SEP.join(rel(r.mask) for r in kept) if any(r.mask for r in kept) else "",
                "t_r": kept[0].t_r,
            }
        )
        if runs == "first" and len(items) > 1:
            notes.append(f"{subject}: {len(items)} runs, kept the first ({items[0].bold.name}); runs=all keeps all")
    table = pd.DataFrame(rows)
    for col in ("confounds", "mask"):
        if (table[col] == "").all():
            table = table.drop(columns=col)
    path = Path(participants).expanduser() if participants is not None else Path(bids).expanduser() / "participants.tsv"
    if participants is not None and not path.is_file():
        raise FileNotFoundError(f"participants table not found: {path}")
    if path.is_file():
        covariates = read_participants(path)
        clash = [c for c in covariates.columns if c in table.columns]
        if clash:
            raise FusionInputError(f"{path}: column(s) {clash} clash with the manifest's own; rename them")
        absent = sorted(set(table["subject_id"]) - set(covariates.index))
        if absent:
            notes.append(f"{path}: no row for {len(absent)} subject(s) with BOLD, e.g. {absent[:3]} (covariates empty)")
        unused = sorted(set(covariates.index) - set(table["subject_id"]))
        if unused:
            notes.append(f"{path}: {len(unused)} participant(s) have no {task} BOLD in {space}, e.g. {unused[:3]}")
        table = table.join(covariates, on="subject_id")
    if "split" in table.columns:
        notes.append(f"splits copied from the participants table's split column ({path})")
    else:
        strata = table["site"].tolist() if "site" in table.columns else None
        groups = table["family_id"].tolist() if "family_id" in table.columns else None
        table["split"] = assign_splits(table["subject_id"].tolist(), split_fractions, split_seed, strata, groups)
    return table, notes


def write_table(table: pd.DataFrame, out: str | Path) -> Path:
    """CSV (or TSV for .tsv/.tab/.txt) written to a temporary file beside `out`, fsynced, then renamed onto it."""
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    sep = "\t" if out.suffix.lower() in (".tsv", ".tab", ".txt") else ","
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            table.to_csv(fh, sep=sep, index=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def parse(argv: list[str]) -> dict:
    """key=value arguments -> build_manifest keywords plus `out` (FusionInputError on unknown or missing keys)."""
    args = {}
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq or key not in OPTIONS:
            raise FusionInputError(f"unknown argument {arg!r}; usage: {USAGE}")
        args[key] = value
    missing = [k for k in ("bids", "out") if not args.get(k)]
    if missing:
        raise FusionInputError(f"missing {', '.join(k + '=' for k in missing)}; usage: {USAGE}")
    merged = {k: v for k, v in OPTIONS.items() if v is not None} | args
    try:
        merged["split_seed"] = int(merged["split_seed"])
        merged["split_fractions"] = tuple(float(x) for x in merged["split_fractions"].split(","))
    except ValueError as err:
        raise FusionInputError(f"split_seed must be an integer, split_fractions three numbers: {err}") from err
    return merged


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        table, notes = build_manifest(**args)
        out = write_table(table, args["out"])
    except (*USER_ERRORS, FileNotFoundError) as err:
        print(f"fusion.manifest: {err}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}")
    counts = table["split"].value_counts()
    splits = ", ".join(f"{s} {int(counts.get(s, 0))}" for s in SPLITS)
    n_runs = sum(len(f.split(RUN_SEP)) for f in table["fmri"])
    print(f"{out}: {len(table)} subjects, {n_runs} runs ({splits}); train with data.manifest={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
