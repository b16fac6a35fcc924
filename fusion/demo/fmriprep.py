"""Write fMRIPrep-style derivatives (BIDS layout, confounds tables, masks) from 4D scans: test and demo input for
`python -m fusion.manifest` (kb/cohort-format.md, "From fMRIPrep derivatives").

    fmriprep_tree(out, {"sub-0001": [img_run1, img_run2], ...}, participants=table, seed=0)
    fmriprep_from_demo(demo_dir, out, runs=1, artefact=0.5)   # the demo cohort's scans as fMRIPrep would hold them
    fmriprep_from_demo(demo_dir, out, cifti=True)             # ... plus fsLR dense series and the atlas as .dlabel.nii
    python -m fusion.demo.fmriprep demo=DIR out=DIR [runs=1] [artefact=0.5] [seed=0] [cifti=0|1]   # from the shell

Per run (BIDS 1.9 / fMRIPrep >= 20.2 names, brain.bids): `sub-<L>/func/sub-<L>_task-rest_run-<R>_space-<SPACE>
_res-2_desc-preproc_bold.nii.gz` + its JSON sidecar (RepetitionTime), `..._desc-brain_mask.nii.gz` (voxels non-zero in
the mean image), `sub-<L>_task-rest_run-<R>_desc-confounds_timeseries.tsv` + `.json` (CompCor metadata). The confounds
(confounds_table) carry the columns nilearn's load_confounds_strategy reads for simple / scrubbing / compcor: 6 motion
parameters with derivatives and squares, csf / white_matter / global_signal likewise, framewise_displacement (Power:
translations + 50 mm x rotations), std_dvars, dvars, cosine drift regressors, a_comp_cor_00..04, and
non_steady_state_outlier00 (volume 0). `spikes` volumes get a jump in trans_x (FD > 0.5 mm, std_dvars > 1.5: what
scrubbing censors). With `artefact` > 0 the BOLD itself gets motion/physiology-driven signal (add_artefact: each
voxel a mix of the motion and csf/wm regressors, `artefact` x its temporal std) and a global jump at the spikes, so
regressing the confounds visibly changes connectivity. participants.tsv gets participant_id and the covariates.
With a `cifti_atlas` (a label NIfTI on the scans' grid), each run is also written as fMRIPrep's `--cifti-output` does,
`sub-<L>_task-rest_run-<R>_space-fsLR_den-91k_bold.dtseries.nii` + `.dtseries.json`, on demo grayordinates
(demo_grayordinates: the atlas's labelled voxels as vertices of a left and a right cortex surface, not HCP's 91,282,
whatever the den label says), and the atlas on the same grayordinates as DLABEL at the tree's root: parcellating the
dense series with it gives the parcel means NiftiLabelsMasker gives for the volume (CIFTI-2 via nibabel.cifti2).
The tree is written in a temporary sibling folder renamed into place.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
TISSUE = ("csf", "white_matter", "global_signal")
N_COMPCOR = 5  # a_comp_cor_00..04 (Mask "combined")
CIFTI_SPACE = "fsLR_den-91k"  # space (and density) entities of the dense series, as fMRIPrep names them
DLABEL = "atlas-demo_space-fsLR_den-91k_dseg.dlabel.nii"  # the atlas on the demo grayordinates (tree root)


def _expand(table: dict, name: str, x: np.ndarray) -> None:
    """fMRIPrep's expansions of one regressor: itself, derivative1 (first row n/a), power2, derivative1_power2."""
    d = np.concatenate([[np.nan], np.diff(x)])
    table[name], table[f"{name}_derivative1"] = x, d
    table[f"{name}_power2"], table[f"{name}_derivative1_power2"] = x**2, d**2


def confounds_table(
    rng: np.random.Generator, n_volumes: int, t_r: float, spikes: tuple[int, ...] = ()
) -> tuple[pd.DataFrame, dict]:
    """(confounds table (n_volumes rows), its JSON sidecar) with the columns listed in the module docstring."""
    table: dict[str, np.ndarray] = {}
    for k, name in enumerate(MOTION):
        step = 0.02 if k < 3 else 0.0004  # mm / rad per volume
        walk = np.cumsum(rng.normal(0.0, step, n_volumes))
        if name == "trans_x":
            for s in spikes:
                walk[s:] += 0.8  # a 0.8 mm jump: FD > 0.5 at volume s
        _expand(table, name, walk)
    t = np.arange(n_volumes)
    for name in TISSUE:
        slow = np.convolve(rng.normal(0, 1, n_volumes + 9), np.ones(10) / 10, mode="valid")
        _expand(table, name, 500.0 + 5.0 * slow + 0.5 * np.sin(2 * np.pi * t * t_r / 4.0))
    motion = np.stack([table[m] for m in MOTION], axis=1)  # (T, 6)
    delta = np.abs(np.diff(motion, axis=0))
    fd = np.concatenate([[np.nan], delta[:, :3].sum(1) + 50.0 * delta[:, 3:].sum(1)])
    std_dvars = np.concatenate([[np.nan], np.abs(rng.normal(1.0, 0.1, n_volumes - 1))])
    std_dvars[list(spikes)] = 2.5
    table["framewise_displacement"], table["std_dvars"], table["dvars"] = fd, std_dvars, 20.0 * std_dvars
    n_cos = max(1, int(np.floor(2 * n_volumes * t_r / 128.0)))  # fMRIPrep: 128 s high-pass, DCT-II basis
    for k in range(n_cos):
        table[f"cosine{k:02d}"] = np.sqrt(2.0 / n_volumes) * np.cos(np.pi * (t + 0.5) * (k + 1) / n_volumes)
    comps = np.linalg.qr(rng.normal(0, 1, (n_volumes, N_COMPCOR)) - 0)[0]
    for k in range(N_COMPCOR):
        table[f"a_comp_cor_{k:02d}"] = comps[:, k]
    outlier = np.zeros(n_volumes)
    outlier[0] = 1.0
    table["non_steady_state_outlier00"] = outlier
    explained = np.sort(rng.uniform(0.02, 0.2, N_COMPCOR))[::-1]
    sidecar = {
        f"a_comp_cor_{k:02d}": {
            "Method": "aCompCor",
            "Mask": "combined",
            "Retained": True,
            "VarianceExplained": float(explained[k]),
            "CumulativeVarianceExplained": float(explained[: k + 1].sum()),
            "SingularValue": float(100 - 10 * k),
        }
        for k in range(N_COMPCOR)
    }
    return pd.DataFrame(table), sidecar


def add_artefact(img: nib.Nifti1Image, confounds: pd.DataFrame, rng, strength: float, spikes=()) -> nib.Nifti1Image:
    """BOLD + confound-driven signal: each in-brain voxel gets a mix of the z-scored motion and csf/wm regressors (one
    shared mix plus a voxel's own, half as strong) at `strength` x its temporal std, and a global jump (2 std) at the
    spike volumes."""
    data = np.asarray(img.dataobj, dtype=np.float32)  # (X, Y, Z, T)
    brain = np.any(data != 0, axis=-1)
    x = data[brain]  # (V, T)
    regs = confounds[[*MOTION, "csf", "white_matter"]].to_numpy(dtype=np.float64)  # (T, 8)
    regs = (regs - regs.mean(0)) / np.where(regs.std(0) > 0, regs.std(0), 1.0)
    shared = rng.normal(0.0, 1.0, (1, regs.shape[1]))  # the same mix everywhere (survives parcel averaging)
    weights = (shared + 0.5 * rng.normal(0.0, 1.0, (x.shape[0], regs.shape[1]))) / np.sqrt(regs.shape[1])  # (V, 8)
    std = x.std(axis=1, keepdims=True)
    x = x + strength * std * (weights @ regs.T).astype(np.float32)  # (V, T)
    for s in spikes:
        x[:, s] += 2.0 * std[:, 0]
    data[brain] = x
    out = nib.Nifti1Image(data, img.affine)
    out.header.set_zooms(img.header.get_zooms()[:4])
    out.header.set_xyzt_units("mm", "sec")
    return out


def demo_grayordinates(atlas: nib.Nifti1Image) -> tuple[nib.cifti2.BrainModelAxis, np.ndarray]:
    """(grayordinates axis, (N, 3) voxel indices): every voxel with a non-zero label, in C order, as one vertex of
    CortexLeft (world x < 0) or CortexRight (the others)."""
    labels = np.asarray(atlas.dataobj)
    voxels = np.argwhere(labels != 0)  # (N, 3), C order
    left = nib.affines.apply_affine(atlas.affine, voxels)[:, 0] < 0
    voxels = np.concatenate([voxels[left], voxels[~left]])
    models = nib.cifti2.BrainModelAxis.from_mask(np.ones(int(left.sum()), bool), name="CortexLeft")
    models = models + nib.cifti2.BrainModelAxis.from_mask(np.ones(int((~left).sum()), bool), name="CortexRight")
    return models, voxels


def dense_series(img: nib.Nifti1Image, models, voxels: np.ndarray, t_r: float) -> nib.Cifti2Image:
    """The 4D image's time courses at `voxels` as a CIFTI-2 dense series (time x grayordinates, float32)."""
    data = np.asarray(img.dataobj, dtype=np.float32)[tuple(voxels.T)].T  # (T, N)
    series = nib.cifti2.SeriesAxis(start=0.0, step=t_r, size=data.shape[0], unit="second")
    return nib.Cifti2Image(np.ascontiguousarray(data), header=(series, models))


def dense_labels(atlas: nib.Nifti1Image, models, voxels: np.ndarray) -> nib.Cifti2Image:
    """The label image at `voxels` as a CIFTI-2 dense label file (one map; key 0 `???`, key k `parcel<k>`)."""
    keys = np.asarray(atlas.dataobj)[tuple(voxels.T)].astype(np.float32)  # (N,)
    table = {0: ("???", (0.0, 0.0, 0.0, 0.0))}
    for k in np.unique(keys).astype(int):
        table[int(k)] = (f"parcel{k:03d}", (float(k % 7) / 7, float(k % 11) / 11, float(k % 13) / 13, 1.0))
    return nib.Cifti2Image(keys[None, :], header=(nib.cifti2.LabelAxis(["parcels"], [table]), models))


def fmriprep_tree(
    out: str | Path,
    scans: dict[str, list[nib.Nifti1Image]],  # subject id ("sub-<label>") -> its runs' 4D images
    participants: pd.DataFrame | None = None,  # covariates, one row per subject id (index), e.g. age, sex, site
    seed: int = 0,  # seeds the confounds and artefacts
    space: str = "MNI152NLin2009cAsym",
    task: str = "rest",
    n_spikes: int = 2,  # high-motion volumes per run (censored by confounds=scrubbing)
    artefact: float = 0.0,  # strength of the confound-driven signal added to the BOLD (0: the scans as given)
    sessions: bool = False,  # put each run in its own ses-<k> folder instead of run-<k> entities
    cifti_atlas: nib.Nifti1Image | None = None,  # also write fsLR dense series on its grayordinates, and DLABEL
) -> Path:
    """Write the derivatives tree (module docstring); returns `out`."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; give a new folder")
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    try:
        (tmp / "dataset_description.json").write_text(
            json.dumps(
                {
                    "Name": "fMRIPrep - demo",
                    "BIDSVersion": "1.9.0",
                    "DatasetType": "derivative",
                    "GeneratedBy": [{"Name": "genobrain fusion.demo.fmriprep"}],
                },
                indent=1,
            )
        )
        if cifti_atlas is not None:
            models, voxels = demo_grayordinates(cifti_atlas)
            nib.save(dense_labels(cifti_atlas, models, voxels), tmp / DLABEL)
        for j, (sid, runs) in enumerate(scans.items()):
            label = sid.removeprefix("sub-")
            for r, img in enumerate(runs):
                rng = np.random.default_rng([seed, j, r])
                n, t_r = int(img.shape[3]), float(img.header.get_zooms()[3])
                spikes = tuple(sorted(rng.choice(np.arange(5, n - 1), size=min(n_spikes, n - 6), replace=False)))
                table, sidecar = confounds_table(rng, n, t_r, spikes)
                if artefact > 0:
                    img = add_artefact(img, table, rng, artefact, spikes)
                ses = f"_ses-{r + 1}" if sessions else ""
                run = "" if sessions else f"_run-{r + 1}"
                func = tmp / sid / (f"ses-{r + 1}" if sessions else "") / "func"
                func.mkdir(parents=True, exist_ok=True)
                stem = f"sub-{label}{ses}_task-{task}{run}"
                bold = func / f"{stem}_space-{space}_res-2_desc-preproc_bold.nii.gz"
                nib.save(img, bold)
                bold.with_name(bold.name.replace(".nii.gz", ".json")).write_text(
                    json.dumps({"RepetitionTime": t_r, "SkullStripped": False, "TaskName": task})
                )
                if cifti_atlas is not None:
                    dts = func / f"{stem}_space-{CIFTI_SPACE}_bold.dtseries.nii"
                    nib.save(dense_series(img, models, voxels, t_r), dts)
                    dts.with_name(dts.name.replace(".nii", ".json")).write_text(
                        json.dumps({"RepetitionTime": t_r, "TaskName": task})
                    )
                mean = np.asarray(img.dataobj, dtype=np.float32).mean(-1)
                mask = nib.Nifti1Image((mean != 0).astype(np.uint8), img.affine)
                nib.save(mask, func / f"{stem}_space-{space}_res-2_desc-brain_mask.nii.gz")
                table.to_csv(func / f"{stem}_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a")
                (func / f"{stem}_desc-confounds_timeseries.json").write_text(json.dumps(sidecar, indent=1))
        if participants is not None:
            table = participants.copy()
            table.insert(0, "participant_id", table.index)
            table.to_csv(tmp / "participants.tsv", sep="\t", index=False, na_rep="n/a")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def fmriprep_from_demo(
    demo_dir: str | Path,  # a generated demo cohort (fusion.demo.generate_demo_cohort)
    out: str | Path,
    runs: int = 1,  # runs per subject (run k > 1: the scan's frames rolled by k x a third of its length)
    artefact: float = 0.5,  # confound-driven signal added to each run (fmriprep_tree)
    seed: int = 0,
    families: bool = True,  # participants.tsv gets family_id (pairs of consecutive subjects)
    cifti: bool = False,  # also the fsLR dense series, and the demo atlas (atlas.nii.gz) as <out>/DLABEL
) -> Path:
    """The demo cohort's scans as fMRIPrep derivatives, with participants.tsv from its manifest's covariates (age,
    sex, site; its split column is dropped so fusion.manifest assigns splits)."""
    demo_dir = Path(demo_dir)
    manifest = pd.read_csv(demo_dir / "manifest.csv", dtype={"subject_id": str})
    scans = {}
    for sid, fmri in zip(manifest["subject_id"], manifest["fmri"]):
        img = nib.load(str(demo_dir / fmri))
        data = np.asarray(img.dataobj, dtype=np.float32)
        shift = data.shape[3] // 3
        images = []
        for k in range(runs):
            run = nib.Nifti1Image(np.roll(data, k * shift, axis=3) if k else data, img.affine)
            run.header.set_zooms(img.header.get_zooms()[:4])
            run.header.set_xyzt_units("mm", "sec")
            images.append(run)
        scans[sid] = images
    covariates = manifest.drop(columns=["fmri", "split"]).set_index("subject_id")
    if families:
        covariates["family_id"] = [f"fam{i // 2 + 1:04d}" for i in range(len(covariates))]
    atlas = nib.load(str(demo_dir / "atlas.nii.gz")) if cifti else None
    return fmriprep_tree(out, scans, covariates, seed=seed, artefact=artefact, cifti_atlas=atlas)


def main(argv: list[str] | None = None) -> int:
    """`python -m fusion.demo.fmriprep demo=DIR out=DIR [runs=1] [artefact=0.5] [seed=0] [cifti=0|1]`: see
    fmriprep_from_demo."""
    import sys

    args = {"runs": "1", "artefact": "0.5", "seed": "0", "cifti": "0"}
    for arg in sys.argv[1:] if argv is None else argv:
        key, eq, value = arg.partition("=")
        if not eq or key not in ("demo", "out", *args):
            print(f"usage: {main.__doc__.split(':')[0].strip('`')}", file=sys.stderr)
            return 2
        args[key] = value
    if "demo" not in args or "out" not in args:
        print("fusion.demo.fmriprep: give demo=DIR (a demo cohort) and out=DIR (a new folder)", file=sys.stderr)
        return 2
    try:
        runs, artefact, seed, cifti = int(args["runs"]), float(args["artefact"]), int(args["seed"]), int(args["cifti"])
        out = fmriprep_from_demo(args["demo"], args["out"], runs=runs, artefact=artefact, seed=seed, cifti=bool(cifti))
    except (OSError, ValueError) as err:
        print(f"fusion.demo.fmriprep: {err}", file=sys.stderr)
        return 2
    print(f"fMRIPrep-style derivatives in {out}; next: python -m fusion.manifest bids={out} out=manifest.csv")
    if cifti:
        print(f"fsLR dense series too: space=fsLR, and data.atlas={out / DLABEL}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
