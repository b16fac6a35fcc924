"""Export entry point: `python -m fusion.export ckpt_path=...` writes every subject's embeddings, per split.

Per subject: subject_id, split, trained_on (whether the subject was in the model's training split), the genomics,
brain and fused embeddings (D floats each; unit vectors in the shared space; fused = l2(genomics + brain),
fusion.model.fuse) and the manifest's covariates, as Parquet (default), .npy or safetensors (`format=`; the files of
each: fusion.export_formats); `embedding_map.png`, a PCA (or UMAP) map of them coloured by a covariate
(fusion.export_map); and provenance.json: the run's resolved config, the checkpoint's SHA-256, the code version, the
cohort files and their SHA-256s, split sizes, and per split its files' SHA-256s and row count.
`data.manifest=... data.vcf=...` embeds another cohort with the trained model, checked against the cohort the model
was trained on first (fusion.export_cohort), into its own folder.

Safe to kill and rerun: each file is written to a temporary name, flushed and renamed (a file present is complete);
provenance.json is rewritten after every split with `"complete": false` until the last one. A rerun with the same
checkpoint, config, cohort files, batch size and format skips the splits whose files still have their recorded
SHA-256s and redoes the rest. The run folder's config_resolved.yaml must name only the project's targets
(fusion.app.checks.check_targets) and the checkpoint is read weights-only (genomics.checkpoints.torch_load): neither
can run code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import logging
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from fusion.app import CONFIG_DIR
from fusion.app.build import Inputs, build
from fusion.app.checks import check_targets
from fusion.app.resilience import write_atomic
from fusion.errors import USER_ERRORS, FusionInputError, InputFileNotFound
from fusion.export_cohort import cohort_files, default_out_dir, given, load_other, other_cohort_config
from fusion.export_formats import EMBEDDINGS, check_format, read_split, split_files, write_split
from fusion.export_map import check_method, draw_map, pick_color_by
from fusion.model import fuse
from fusion.splits import SPLITS
from genomics.checkpoints import sha256_file, torch_load

log = logging.getLogger(__name__)
ALL = "all"  # the split name of one file holding every subject (each row's `split` is its cohort split)
MAP = "embedding_map.png"


def code_version() -> dict:
    out = {"genobrain": version("genobrain")}
    try:
        root = Path(__file__).resolve().parents[1]
        out["git_commit"] = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True)
        out["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    return out


def load_run(ckpt_path: Path, run_dir: Path | None = None):
    """Rebuild datamodule and model from a training run's resolved config and load the checkpoint's weights."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.exists():
        raise InputFileNotFound(f"checkpoint not found: {ckpt_path}")
    run_dir = Path(run_dir) if run_dir else ckpt_path.resolve().parent.parent
    cfg_file = run_dir / "config_resolved.yaml"
    if not cfg_file.exists():
        raise InputFileNotFound(f"{cfg_file} not found: pass run_dir= (the fusion.train run folder of this checkpoint)")
    cfg = OmegaConf.load(cfg_file)
    check_targets(cfg, cfg_file)  # before anything is instantiated from it
    state = torch_load(ckpt_path)["state_dict"]  # weights-only: a pickle that runs code is refused
    run = build(cfg)
    run.model.load_state_dict(state)
    run.model.eval()
    return cfg, run


@torch.no_grad()
def embed_split(model, loader) -> dict[str, list]:
    rows = {"subject_id": [], "genomics": [], "brain": [], "fused": []}
    for batch in loader:
        z = model.net(batch["genomics"], batch["brain"])
        rows["subject_id"] += list(batch["subject_id"])
        rows["genomics"].append(z["genomics"])
        rows["brain"].append(z["brain"])
        rows["fused"].append(fuse(z["genomics"], z["brain"]))
    for key in EMBEDDINGS:
        rows[key] = torch.cat(rows[key]).float().numpy() if rows[key] else torch.empty(0, model.net.embed_dim).numpy()
    return rows


def progress_bar(loaders: list, desc: str, progress: bool):
    """The batches of `loaders`, one after the other, behind a tqdm bar (off when not a TTY or progress=False)."""
    from tqdm.auto import tqdm

    batches = itertools.chain.from_iterable(loaders)
    return tqdm(
        batches, total=sum(len(lo) for lo in loaders), desc=desc, unit="batch", disable=None if progress else True
    )


def subject_table(ids: list[str], cohort, trained_ids: set[str]) -> pd.DataFrame:
    """subject_id, split (the subject's cohort split), trained_on, then the manifest's covariates, in `ids` order."""
    rows = cohort.subjects.set_index("subject_id").loc[ids]
    meta = pd.DataFrame({"subject_id": list(ids), "split": rows["split"].astype(str).to_numpy(),
                         "trained_on": [sid in trained_ids for sid in ids]})  # fmt: skip
    for name in cohort.covariates:
        meta[name] = rows[name].to_numpy()
    return meta


def export(ckpt_path, run_dir=None, out_dir=None, splits=None, batch_size=None, format="parquet",
           embedding_map=True, color_by=None, method="pca", progress=True, data=None) -> dict[str, Path]:  # fmt: skip
    """Write the export (module docstring); {split or "map" or "provenance": its first file}. `splits`: None = train,
    val, test for the run's cohort, "all" (one file) for another cohort; `data`: cohort keys replacing the run's."""
    fmt = check_format(format)
    check_method(method)
    splits = [splits] if isinstance(splits, str) else splits
    bad = [s for s in splits or () if s not in (*SPLITS, ALL)]
    if bad:
        raise FusionInputError(f"splits={bad}: each split must be one of {', '.join((*SPLITS, ALL))}")
    ckpt_path = Path(ckpt_path)
    cfg, run = load_run(ckpt_path, run_dir)
    run_dir = Path(run_dir) if run_dir else ckpt_path.resolve().parent.parent
    trained_ids = set(run.cohort.subjects.loc[run.cohort.subjects["split"] == "train", "subject_id"])
    datamodule, model, cohort, report, target_cfg = run.datamodule, run.model, run.cohort, run.report, cfg
    eval_batch_size = batch_size or datamodule.eval_batch_size
    other = other_cohort_config(cfg, given(data))
    if other is not None:  # another cohort through the trained model, checked before any compute
        trained = Inputs(run.cohort, run.report, datamodule.genomics_transform, datamodule.brain_transform)
        inputs, datamodule = load_other(other, trained, model, eval_batch_size)
        cohort, report, target_cfg = inputs.cohort, inputs.report, other
    datamodule.eval_batch_size = eval_batch_size
    if datamodule.feature_cache is not None:  # the frozen towers' pre-pass (fusion.feature_cache) has its own bar
        datamodule.feature_cache.progress = datamodule.feature_cache.progress and progress
    color_by = pick_color_by(color_by, cohort.covariates) if embedding_map else None
    splits = list(splits or ((ALL,) if other is not None else SPLITS))
    files = cohort_files(target_cfg)
    if out_dir is None:
        out_dir = default_out_dir(run_dir, files) if other is not None else run_dir / "export"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".*.tmp-*"):  # a killed write's temporary file
        stale.unlink(missing_ok=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    identity = {
        "checkpoint_sha256": sha256_file(ckpt_path),
        "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest(),
        "cohort_sha256": {k: v["sha256"] for k, v in files.items()},
        "batch_size": datamodule.eval_batch_size,
        "format": fmt,
    }
    done = finished_splits(out_dir, identity)
    sizes = datamodule.split_sizes()
    sidecar = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        "complete": False,
        "checkpoint": str(ckpt_path.resolve()),
        **identity,
        "code": code_version(),
        "fused": "l2_normalize(genomics + brain); genomics and brain are the unit-norm projections",
        "trained_on": "subject_id is in the training split of the cohort the model was trained on",
        "cohort": {"files": files, "trained_cohort": other is None, "split_source": report.split_source},
        "splits": {},  # split -> {"files": {name: sha256}, "rows"}, as each is written
        "files": {},
        "split_sizes": {s: sum(sizes.values()) if s == ALL else sizes[s] for s in splits},
        "cohort_report": report.summary(),
        "config": config,
    }
    written, tables = {}, {}
    for split in splits:
        names = split_files(split, fmt)
        written[split] = out_dir / names[0]
        if split in done:
            log.info("%s: already exported by an earlier run (SHA-256s match); kept", written[split])
            sidecar["splits"][split] = done[split]
        else:
            parts = [s for s in SPLITS if sizes[s]] if split == ALL else [split]
            loaders = [datamodule.predict_loader(s) for s in parts]
            rows = embed_split(model, progress_bar(loaders, f"export {split}", progress))
            meta = subject_table(rows["subject_id"], cohort, trained_ids)
            hashes = write_split(out_dir, split, fmt, rows, meta)
            tables[split] = ({k: rows[k] for k in EMBEDDINGS}, meta)
            sidecar["splits"][split] = {"files": hashes, "rows": len(meta)}
            log.info("wrote %s (%d subjects)", ", ".join(names), len(meta))
        sidecar["files"][split] = names
        write_provenance(out_dir, sidecar)  # the splits so far, "complete": false
    if embedding_map:
        parts = [tables.get(s) or read_split(out_dir, s, fmt) for s in splits]
        embeddings = {k: np.concatenate([p[0][k] for p in parts]) for k in EMBEDDINGS}
        meta = pd.concat([p[1] for p in parts], ignore_index=True)
        kind = cohort.covariates.get(color_by) if color_by else None
        written["map"] = draw_map(embeddings, meta, color_by, kind, method, out_dir / MAP,
                                  title=f"{Path(str(cohort.manifest)).name}: ")  # fmt: skip
        sidecar["map"] = {"file": MAP, "sha256": sha256_file(written["map"]), "color_by": color_by, "method": method}
    sidecar["complete"] = True
    written["provenance"] = write_provenance(out_dir, sidecar)
    return written


def write_provenance(out_dir: Path, sidecar: dict) -> Path:
    path = out_dir / "provenance.json"
    write_atomic(path, lambda fh: fh.write(json.dumps(sidecar, indent=2, default=str).encode()))
    return path


def finished_splits(out_dir: Path, identity: dict) -> dict[str, dict]:
    """Splits an earlier export with the same identity (checkpoint, config, cohort files, batch size, format)
    finished, whose every file is unchanged."""
    try:
        previous = json.loads((out_dir / "provenance.json").read_text())
    except (OSError, ValueError):
        return {}
    if any(previous.get(k) != v for k, v in identity.items()):
        return {}
    done = {}
    for split, entry in (previous.get("splits") or {}).items():
        hashes = entry.get("files") if isinstance(entry, dict) else None
        if not isinstance(hashes, dict) or not hashes:
            continue
        paths = {out_dir / str(name): sha for name, sha in hashes.items()}
        if all(p.is_file() and p.parent == out_dir and sha256_file(p) == sha for p, sha in paths.items()):
            done[split] = entry
    return done


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        written = export(cfg.ckpt_path, cfg.run_dir, cfg.out_dir, cfg.splits, cfg.batch_size, cfg.format,
                         cfg.map, cfg.color_by, cfg.method, cfg.progress, cfg.data)  # fmt: skip
    except USER_ERRORS as err:  # a user's mistake: its message, no traceback (fusion.errors)
        print(f"fusion.export: {err}", file=sys.stderr)
        sys.exit(2)
    for name, path in written.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
