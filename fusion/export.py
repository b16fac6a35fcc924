"""Export entry point: `python -m fusion.export ckpt_path=...` writes one Parquet file per split.

Columns: subject_id, split, genomics (512 floats), brain (512), fused (512), then the manifest's covariates. The three
embeddings are unit vectors in the shared space; fused = l2(genomics + brain) (fusion.model.fuse). A JSON sidecar
records provenance: the run's resolved config, the checkpoint's SHA-256, the code version, the cohort files and split
sizes. Files are written to a temporary name and renamed, so an interrupted export never leaves a truncated file in
place of a good one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
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
from fusion.model import fuse
from genomics.checkpoints import sha256_file

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
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path}")
    run_dir = Path(run_dir) if run_dir else ckpt_path.resolve().parent.parent
    cfg_file = run_dir / "config_resolved.yaml"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file} not found: pass run_dir= (the fusion.train run folder of this checkpoint)")
    cfg = OmegaConf.load(cfg_file)
    run = build(cfg)
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


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
    cfg, run = load_run(Path(ckpt_path), run_dir)
    datamodule, model = run.datamodule, run.model
    covariates = run.cohort.subjects[["subject_id", *run.cohort.covariates]]
    if batch_size:
        datamodule.eval_batch_size = batch_size
    out_dir = Path(out_dir) if out_dir else Path(ckpt_path).resolve().parent.parent / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split in splits:
        table = to_table(embed_split(model, datamodule.predict_loader(split)), split, covariates)
        written[split] = out_dir / f"{split}.parquet"
        write_parquet_atomic(table, written[split])
        log.info("wrote %s (%d subjects)", written[split], table.num_rows)
    sidecar = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        "checkpoint": str(Path(ckpt_path).resolve()),
        "checkpoint_sha256": sha256_file(Path(ckpt_path)),
        "code": code_version(),
        "fused": "l2_normalize(genomics + brain); genomics and brain are the unit-norm projections",
        "files": {split: p.name for split, p in written.items()},
        "split_sizes": {split: datamodule.split_sizes()[split] for split in splits},
        "cohort_report": run.report.summary(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    tmp = out_dir / ".provenance.json.tmp"
    tmp.write_text(json.dumps(sidecar, indent=2, default=str))
    os.replace(tmp, out_dir / "provenance.json")
    written["provenance"] = out_dir / "provenance.json"
    return written


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    written = export(cfg.ckpt_path, cfg.run_dir, cfg.out_dir, tuple(cfg.splits), cfg.batch_size)
    for name, path in written.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
