"""The files fusion.export writes per split, in each `format=` (kb/fusion.md, "Export"), and how to read them back.

    parquet       {split}.parquet: subject_id, split, trained_on, genomics, brain, fused (fixed-size lists of D
                  float32), then the manifest's covariates. One line: pd.read_parquet / polars.read_parquet.
    npy           {split}_genomics.npy, {split}_brain.npy, {split}_fused.npy: float32 (N, D) arrays (numpy.save),
                  and {split}_subjects.csv: subject_id, split, trained_on, covariates, one row per array row,
                  same order. One line: np.load("test_fused.npy").
    safetensors   {split}.safetensors: tensors genomics, brain, fused (float32 (N, D)); its metadata (str -> str)
                  holds subject_id (a JSON list, the row order) and split; plus {split}_subjects.csv as for npy.
                  One line: safetensors.numpy.load_file("test.safetensors").

Every file is written with fusion.app.resilience.write_atomic (temporary sibling, fsync, rename), so a file present is
complete; write_split returns each file's SHA-256 for provenance.json, which is how a rerun knows a split is done.
References: Apache Arrow / Parquet (pyarrow), the NumPy .npy format (numpy.lib.format), safetensors' format
(huggingface/safetensors, safetensors.numpy).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors import safe_open
from safetensors.numpy import load_file as load_safetensors
from safetensors.numpy import save as save_safetensors

from fusion.app.resilience import write_atomic
from fusion.errors import FusionInputError
from genomics.checkpoints import sha256_file

FORMATS = ("parquet", "npy", "safetensors")
EMBEDDINGS = ("genomics", "brain", "fused")  # the three (N, D) float32 matrices of every split
META = ("subject_id", "split", "trained_on")  # the per-subject columns before the covariates


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise FusionInputError(f"format={fmt!r}: must be one of {', '.join(FORMATS)}")
    return fmt


def split_files(split: str, fmt: str) -> list[str]:
    """The file names one split writes in `fmt`, in writing order."""
    check_format(fmt)
    if fmt == "parquet":
        return [f"{split}.parquet"]
    if fmt == "npy":
        return [f"{split}_{key}.npy" for key in EMBEDDINGS] + [f"{split}_subjects.csv"]
    return [f"{split}.safetensors", f"{split}_subjects.csv"]


def parquet_table(embeddings: dict[str, np.ndarray], meta: pd.DataFrame) -> pa.Table:
    """subject_id, split, trained_on, genomics, brain, fused (fixed-size float lists), then the covariates."""
    cols = {name: pa.Array.from_pandas(meta[name]) for name in META}
    cols["subject_id"] = pa.array(meta["subject_id"].astype(str), pa.string())
    cols["trained_on"] = pa.array(meta["trained_on"].astype(bool), pa.bool_())
    for key in EMBEDDINGS:
        mat = np.ascontiguousarray(embeddings[key], dtype=np.float32)
        cols[key] = pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1)), mat.shape[1])
    table = pa.table(cols)
    for name in meta.columns:
        if name not in META:
            table = table.append_column(name, pa.Array.from_pandas(meta[name]))
    return table


def write_split(out_dir: Path, split: str, fmt: str, embeddings: dict[str, np.ndarray], meta: pd.DataFrame) -> dict:
    """Write one split's files (split_files) atomically; {file name: SHA-256}. `meta`: subject_id, split, trained_on,
    covariates, one row per embedding row."""
    names = split_files(split, fmt)
    mats = {key: np.ascontiguousarray(embeddings[key], dtype=np.float32) for key in EMBEDDINGS}
    if fmt == "parquet":
        table = parquet_table(mats, meta)
        write_atomic(out_dir / names[0], lambda fh: pq.write_table(table, fh))
    else:
        if fmt == "npy":
            for key, name in zip(EMBEDDINGS, names):
                write_atomic(out_dir / name, lambda fh, mat=mats[key]: np.save(fh, mat, allow_pickle=False))
        else:
            metadata = {"subject_id": json.dumps(meta["subject_id"].astype(str).tolist()), "split": split}
            blob = save_safetensors(mats, metadata=metadata)
            write_atomic(out_dir / names[0], lambda fh: fh.write(blob))
        text = meta.to_csv(index=False).encode()
        write_atomic(out_dir / names[-1], lambda fh: fh.write(text))
    return {name: sha256_file(out_dir / name) for name in names}


def read_subjects_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"subject_id": str, "split": str}, keep_default_na=True)


def read_split(out_dir: Path, split: str, fmt: str) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """(embeddings {genomics, brain, fused: (N, D) float32}, meta DataFrame) of a written split, any format."""
    out_dir, names = Path(out_dir), split_files(split, fmt)
    if fmt == "parquet":
        table = pq.read_table(out_dir / names[0])
        embeddings = {key: flat_matrix(table.column(key)) for key in EMBEDDINGS}
        meta = table.drop_columns(list(EMBEDDINGS)).to_pandas()
        return embeddings, meta
    meta = read_subjects_csv(out_dir / names[-1])
    if fmt == "npy":
        embeddings = {key: np.load(out_dir / name, allow_pickle=False) for key, name in zip(EMBEDDINGS, names)}
    else:
        embeddings = load_safetensors(str(out_dir / names[0]))
    return {key: embeddings[key] for key in EMBEDDINGS}, meta


def flat_matrix(column: pa.ChunkedArray) -> np.ndarray:
    """A fixed-size-list column -> (N, D) numpy array (no Python objects per row)."""
    arr = column.combine_chunks()
    width = arr.type.list_size
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The str -> str metadata of a .safetensors file (its JSON header's __metadata__)."""
    with safe_open(str(path), framework="np") as fh:
        return dict(fh.metadata() or {})
