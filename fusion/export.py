"""Export entry point: `python -m fusion.export ckpt_path=...` writes one Parquet file per split.

Columns: subject_id, split, genomics (512 floats), brain (512), fused (512), then the manifest's covariates. The three
embeddings are unit vectors in the shared space; fused = l2(genomics + brain) (fusion.model.fuse). A JSON sidecar
records provenance: the run's resolved config, the checkpoint's SHA-256, the code version, the cohort files and split
sizes, and per split its file's SHA-256 and row count.

Safe to kill and rerun: each file is written to a temporary name, flushed and renamed (a Parquet file present is
complete); provenance.json is rewritten after every split with `"complete": false` until the last one. A rerun with
the same checkpoint and config skips the splits whose file still has its recorded SHA-256 and redoes the rest.
The run folder's config_resolved.yaml must name only the project's targets (fusion.app.checks.check_targets) and the
checkpoint is read weights-only (genomics.checkpoints.torch_load): neither can run code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import hydra
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig, OmegaConf

from fusion.app import CONFIG_DIR
from fusion.app.build import build
from fusion.app.checks import check_targets
from fusion.app.resilience import write_atomic
from fusion.errors import USER_ERRORS, InputFileNotFound
from fusion.model import fuse
from genomics.checkpoints import sha256_file, torch_load

log = logging.getLogger(__name__)


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
    for key in ("genomics", "brain", "fused"):
        rows[key] = torch.cat(rows[key]).float().numpy() if rows[key] else torch.empty(0, model.net.embed_dim).numpy()
    return rows


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    write_atomic(path, lambda fh: pq.write_table(table, fh))


def to_table(rows: dict, split: str, covariates: pd.DataFrame) -> pa.Table:
    """subject_id, split, genomics, brain, fused (fixed-size float lists), then the manifest's covariates."""
    n = len(rows["subject_id"])
    cols = {"subject_id": pa.array(rows["subject_id"], pa.string()), "split": pa.array([split] * n, pa.string())}
    for key in ("genomics", "brain", "fused"):
        mat = rows[key]
        cols[key] = pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1)), mat.shape[1])
    table = pa.table(cols)
    covs = covariates.set_index("subject_id").loc[rows["subject_id"]].reset_index(drop=True)
    for name in covs.columns:
        table = table.append_column(name, pa.Array.from_pandas(covs[name]))
    return table


def export(ckpt_path, run_dir=None, out_dir=None, splits=("train", "val", "test"), batch_size=None) -> dict[str, Path]:
    ckpt_path = Path(ckpt_path)
    cfg, run = load_run(ckpt_path, run_dir)
    datamodule, model = run.datamodule, run.model
    covariates = run.cohort.subjects[["subject_id", *run.cohort.covariates]]
    if batch_size:
        datamodule.eval_batch_size = batch_size
    out_dir = Path(out_dir) if out_dir else ckpt_path.resolve().parent.parent / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".*.tmp-*"):  # a killed write's temporary file
        stale.unlink(missing_ok=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    identity = {
        "checkpoint_sha256": sha256_file(ckpt_path),
        "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest(),
        "batch_size": datamodule.eval_batch_size,
    }
    done = finished_splits(out_dir, identity)
    sidecar = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        "complete": False,
        "checkpoint": str(ckpt_path.resolve()),
        **identity,
        "code": code_version(),
        "fused": "l2_normalize(genomics + brain); genomics and brain are the unit-norm projections",
        "splits": {},  # split -> {"file", "sha256", "rows"}, as each is written
        "files": {},
        "split_sizes": {split: datamodule.split_sizes()[split] for split in splits},
        "cohort_report": run.report.summary(),
        "config": config,
    }
    written = {}
    for split in splits:
        written[split] = out_dir / f"{split}.parquet"
        if split in done:
            log.info("%s: already exported by an earlier run (SHA-256 matches); kept", written[split])
            sidecar["splits"][split] = done[split]
        else:
            table = to_table(embed_split(model, datamodule.predict_loader(split)), split, covariates)
            write_parquet_atomic(table, written[split])
            sidecar["splits"][split] = {"file": written[split].name, "sha256": sha256_file(written[split]),
                                        "rows": table.num_rows}  # fmt: skip
            log.info("wrote %s (%d subjects)", written[split], table.num_rows)
        sidecar["files"][split] = written[split].name
        write_provenance(out_dir, sidecar)  # the splits so far, "complete": false
    sidecar["complete"] = True
    written["provenance"] = write_provenance(out_dir, sidecar)
    return written


def write_provenance(out_dir: Path, sidecar: dict) -> Path:
    path = out_dir / "provenance.json"
    write_atomic(path, lambda fh: fh.write(json.dumps(sidecar, indent=2, default=str).encode()))
    return path


def finished_splits(out_dir: Path, identity: dict) -> dict[str, dict]:
    """Splits an earlier export of the same checkpoint, config and batch size finished, whose file is unchanged."""
    try:
        previous = json.loads((out_dir / "provenance.json").read_text())
    except (OSError, ValueError):
        return {}
    if any(previous.get(k) != v for k, v in identity.items()):
        return {}
    done = {}
    for split, entry in (previous.get("splits") or {}).items():
        path = out_dir / str(entry.get("file", ""))
        if path.is_file() and path.parent == out_dir and sha256_file(path) == entry.get("sha256"):
            done[split] = entry
    return done


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        written = export(cfg.ckpt_path, cfg.run_dir, cfg.out_dir, tuple(cfg.splits), cfg.batch_size)
    except USER_ERRORS as err:  # a user's mistake: its message, no traceback (fusion.errors)
        print(f"fusion.export: {err}", file=sys.stderr)
        sys.exit(2)
    for name, path in written.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
