"""Checks of each subject's fMRI scan against the atlas, for fusion.cohort (library code).

    scans = ScanChecks(atlas_img, labels, level)       # level: "cheap" | "full" | "deep"
    for severity, message, reason in scans.check(img, path): ...   # img: nibabel image, header already read

Every level (header only): the atlas, resampled to the scan's grid by nearest neighbour (as the parcel masker does
when the grids differ), must keep every parcel inside the scan's field of view. "full" also reads three volumes per
scan (first, middle, last; nibabel dataobj slicing, never the whole scan) and "deep" every volume (in chunks):
NaN/Inf voxels (an error inside the parcels, which the loader would read as 0; a warning outside them) and parcels
that are all zero in every volume read (no signal: the scan's mask misses them); "deep" also finds parcels whose mean
never changes over time. Grids are compared once per distinct (shape, affine).

    runs, found = check_runs(row, manifest, scans, atlas_info, root)   # a manifest row's runs (brain.scans.Run)

check_runs reads a row's `fmri` (one or several runs), `confounds`, `mask` and `t_r` cells: each run's kind (NIfTI
volume, CIFTI-2 dense series, parcellated table), header (volumes, TR) and companions (confounds rows = volumes, mask
on the run's grid), then ScanChecks for volumes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brain.scans import RUN_SEP, Run, input_kind, parcel_table_shape
from fusion.cohort_checks import Problem

LEVELS = ("cheap", "full", "deep")


class ScanChecks:
    def __init__(self, atlas, labels: np.ndarray, level: str = "cheap"):
        if level not in LEVELS:
            raise ValueError(f"checks must be one of {LEVELS}, got {level!r}")
        self.atlas, self.labels, self.level = atlas, np.asarray(labels, dtype=int), level
        self._atlas_data = None  # unusable atlas (labels empty, reported): nothing to check against
        if len(self.labels):
            self._atlas_data = np.asarray(atlas.dataobj).reshape(atlas.shape[:3]).astype(np.int64)
        self._grids: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # grid -> (parcel position map, missing labels)
        self.off_grid: list[str] = []  # scans not on the atlas grid (resampled at load time)

    def check(self, img, path) -> list[tuple[str, str, str]]:
        """(severity, message, short reason) for one scan; empty when the scan is fine."""
        if len(self.labels) == 0:
            return []  # the atlas itself is unusable (reported)
        shape = tuple(int(s) for s in img.shape[:3])
        positions, missing = self._grid(shape, img.affine, str(path))
        out = []
        if len(missing):
            out.append(
                (
                    "error",
                    f"{len(missing)} atlas parcel(s) (labels {missing[:10].tolist()}) fall outside the scan's field "
                    f"of view (scan grid {shape}, voxel size {_zooms(img.affine)} mm; atlas {self.atlas.shape[:3]}, "
                    f"{_zooms(self.atlas.affine)} mm): the scans must be in the atlas's space: {path}",
                    "parcels outside the field of view",
                )
            )
        if self.level != "cheap":
            out += self._content(img, path, positions)
        return out

    def problems(self, where: str) -> list[Problem]:
        """Cohort-level notes (one line, not one per subject)."""
        if not self.off_grid:
            return []
        return [
            Problem(
                "warning",
                where,
                f"{len(self.off_grid)} scan(s) are not on the atlas's grid (shape/affine differ), e.g. "
                f"{self.off_grid[0]}: the atlas is resampled to each by nearest neighbour at load time",
            )
        ]

    def _grid(self, shape: tuple, affine: np.ndarray, path: str) -> tuple[np.ndarray, np.ndarray]:
        """(map scan voxel -> parcel position 0..P-1, -1 outside parcels; labels absent from the scan's grid)."""
        same = shape == tuple(self.atlas.shape[:3]) and np.allclose(affine, self.atlas.affine, atol=1e-4)
        if not same:
            self.off_grid.append(path)
        key = (shape, np.round(np.asarray(affine, dtype=float), 4).tobytes())
        if key not in self._grids:
            if same:
                lab = self._atlas_data
            else:  # nearest neighbour: scan voxel -> world -> atlas voxel
                m = np.linalg.inv(self.atlas.affine) @ np.asarray(affine, dtype=float)
                ijk = np.indices(shape).reshape(3, -1)
                src = np.rint(m[:3, :3] @ ijk + m[:3, 3:]).astype(np.int64)
                inside = np.all((src >= 0) & (src < np.array(self.atlas.shape[:3])[:, None]), axis=0)
                lab = np.zeros(ijk.shape[1], dtype=np.int64)
                lab[inside] = self._atlas_data[tuple(src[:, inside])]
                lab = lab.reshape(shape)
            pos = np.minimum(np.searchsorted(self.labels, lab), len(self.labels) - 1)
            pos = np.where((lab != 0) & (self.labels[pos] == lab), pos, -1)
            missing = np.setdiff1d(self.labels, np.unique(lab))
            self._grids[key] = (pos, missing)
        return self._grids[key]

    def _content(self, img, path, positions: np.ndarray) -> list[tuple[str, str, str]]:
        n = int(img.shape[3])
        wanted = range(n) if self.level == "deep" else sorted({0, n // 2, n - 1})
        inside = positions >= 0
        where = positions[inside]
        p = len(self.labels)
        signal = np.zeros(p, dtype=bool)  # parcel has a non-zero finite voxel in some volume read
        bad_in, bad_out, bad_volumes, means, read = 0, 0, [], [], 0
        counts = np.maximum(np.bincount(where, minlength=p), 1)
        try:
            for t, vol in read_volumes(img, path, wanted):
                x = vol[inside]
                finite = np.isfinite(x)
                n_bad_in = int((~finite).sum())
                n_bad_out = int((~np.isfinite(vol[~inside])).sum())
                if n_bad_in or n_bad_out:
                    bad_volumes.append(t)
                bad_in, bad_out = bad_in + n_bad_in, bad_out + n_bad_out
                x = np.where(finite, x, 0.0)
                signal |= np.bincount(where[x != 0], minlength=p) > 0
                if self.level == "deep":
                    means.append(np.bincount(where, weights=x, minlength=p) / counts)
                read += 1
        except Exception as err:  # nibabel / gzip / zlib raise several types for a truncated file
            return [("error", f"fMRI image data cannot be read ({err}; truncated or corrupt file?): {path}",
                     "fMRI unreadable")]  # fmt: skip
        out = []
        volumes = f"volume(s) {bad_volumes[:5]}" + (" ..." if len(bad_volumes) > 5 else "")
        if bad_in:
            out.append(
                (
                    "error",
                    f"{bad_in} NaN/Inf value(s) inside atlas parcels ({volumes} of the {read} read): the loader reads "
                    f"them as 0, which biases the parcel means; fix the preprocessing or mask them: {path}",
                    "NaN/Inf voxels",
                )
            )
        if bad_out:
            out.append(("warning", f"{bad_out} NaN/Inf value(s) outside the atlas parcels ({volumes}; ignored): {path}",
                        ""))  # fmt: skip
        empty = self.labels[~signal]
        if len(empty):
            out.append(
                (
                    "error",
                    f"{len(empty)} atlas parcel(s) are all zero in the {read} volume(s) read (labels "
                    f"{empty[:10].tolist()}): the scan's brain mask or field of view misses them, so their series "
                    f"would be constant; use a scan covering the atlas or an atlas matching the scans: {path}",
                    "empty parcels",
                )
            )
        if means and len(means) > 1:
            flat = self.labels[signal & (np.ptp(np.stack(means), axis=0) == 0)]
            if len(flat):
                out.append(
                    (
                        "error",
                        f"{len(flat)} atlas parcel(s) have the same mean in every volume (labels "
                        f"{flat[:10].tolist()}): no signal over time there: {path}",
                        "flat parcels",
                    )
                )
        return out


def read_volumes(img, path, wanted) -> Iterator[tuple[int, np.ndarray]]:
    """(t, volume (X, Y, Z) float32) for the volumes `wanted` (ascending), reading no more than needed. A .nii.gz is
    decompressed as one stream in large blocks (zlib; far faster than seeking a GzipFile), never whole in memory;
    other files go through nibabel's dataobj slicing."""
    proxy = img.dataobj
    shape = tuple(int(s) for s in img.shape[:3])
    if not (str(path).endswith(".gz") and getattr(proxy, "order", None) == "F" and hasattr(proxy, "offset")):
        for t in wanted:
            yield t, np.asarray(proxy[..., t], dtype=np.float32)
        return
    dtype = np.dtype(proxy.dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    slope, inter = float(proxy.slope), float(proxy.inter)
    wanted = list(wanted)
    for i, raw in _gz_segments(path, [int(proxy.offset) + t * size for t in wanted], size):
        vol = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F").astype(np.float32)
        if slope != 1.0 or inter != 0.0:
            vol = vol * np.float32(slope) + np.float32(inter)
        yield wanted[i], vol


def _gz_segments(path, starts: list[int], size: int, block: int = 1 << 16) -> Iterator[tuple[int, bytes]]:
    """(i, decompressed bytes [starts[i], starts[i] + size)) of a gzip file, starts ascending; EOFError if short."""
    import zlib

    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    i, pos, buf = 0, 0, bytearray()  # buf: decompressed bytes from starts[i] on
    with open(path, "rb") as fh:
        pending = b""
        while i < len(starts):
            chunk = pending or fh.read(block)
            pending = b""
            if not chunk:
                raise EOFError(f"the file ends before byte {starts[i] + size} of the image data")
            data = inflate.decompress(chunk)
            if inflate.eof:  # a multi-member gzip: the next member starts in unused_data
                pending, inflate = inflate.unused_data, zlib.decompressobj(16 + zlib.MAX_WBITS)
            begin, pos = pos, pos + len(data)
            if pos > starts[i]:
                buf += data[max(0, starts[i] - begin) :]
            while i < len(starts) and len(buf) >= size:
                yield i, bytes(buf[:size])
                i += 1
                if i < len(starts):
                    del buf[: starts[i] - starts[i - 1]]  # all of buf when the next segment is not read yet


def _zooms(affine: np.ndarray) -> tuple[float, ...]:
    return tuple(round(float(z), 2) for z in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


# ------------------------------------------------------------------------------------- a manifest row's fMRI runs

FILE_COLUMNS = ("confounds", "mask")  # per-run files beside `fmri` in the manifest (not covariates)


@dataclass
class AtlasInfo:
    """What the run checks need of the atlas: its kind and size (and the grayordinates of a CIFTI one)."""

    kind: str  # "volume" (label NIfTI) | "cifti" (.dlabel.nii)
    n_parcels: int
    models: object = None  # the dlabel's BrainModelAxis (CIFTI atlases)


def _cells(value, n: int | None, column: str) -> list[str | None]:
    """A manifest cell split on RUN_SEP; empty cell -> [None] * n (n: the number of runs, None for fmri itself)."""
    if not isinstance(value, str) or not value.strip():
        return [None] * (n or 1)
    parts = [p.strip() or None for p in value.split(RUN_SEP)]
    if n is not None and len(parts) != n:
        raise ValueError(f"`{column}` lists {len(parts)} file(s) for {n} run(s); give one per run, `{RUN_SEP}`-joined")
    return parts


def _resolve(cell: str, manifest: Path) -> Path:
    path = Path(cell).expanduser()
    return (path if path.is_absolute() else manifest.parent / path).absolute()


def _table_rows(path: Path) -> int:
    """Data rows of a TSV (lines after the header, blank lines ignored)."""
    with open(path, "rb") as fh:
        return max(sum(1 for line in fh if line.strip()) - 1, 0)


def check_runs(
    row: dict, manifest: Path, scans: ScanChecks | None, atlas: AtlasInfo | None, root: Path | None = None
) -> tuple[list[Run] | None, list[tuple[str, str, str]]]:
    """(the row's runs, or None when the subject is unusable; (severity, message, short reason) problems).

    `fmri` may list several runs (RUN_SEP); `confounds` / `mask` one file per run; `t_r` (seconds) wins over the
    headers (a >1% disagreement is a warning). Per run: the file exists (inside root) and its header reads as its
    kind (brain.scans.input_kind): a 4D NIfTI (checked against the atlas by ScanChecks), a CIFTI-2 dense series on
    the dlabel atlas's grayordinates, or a time x parcels table with one column per atlas parcel. Confounds tables
    must have one row per volume, masks the run's grid."""
    from fusion.cohort_checks import inside

    out: list[tuple[str, str, str]] = []
    try:
        paths = [p for p in _cells(row.get("fmri"), None, "fmri") if p is not None]
        if not paths:
            return None, [("error", "empty fmri path", "no fMRI path")]
        extra = {c: _cells(row.get(c), len(paths), c) for c in FILE_COLUMNS}
    except ValueError as err:
        return None, [("error", str(err), "run lists differ")]
    t_r_cell = pd.to_numeric(pd.Series([row.get("t_r")]), errors="coerce")[0]
    manifest_t_r = float(t_r_cell) if np.isfinite(t_r_cell) and t_r_cell > 0 else None
    if row.get("t_r") not in (None, "") and manifest_t_r is None and not pd.isna(row.get("t_r")):
        out.append(("error", f"t_r {row.get('t_r')!r} is not a positive number of seconds", "bad t_r"))
        return None, out
    runs = []
    for k, cell in enumerate(paths):
        path = _resolve(cell, manifest)
        if root is not None and not inside(path, root):
            out.append(("error", f"fMRI path {cell!r} resolves to {path.resolve()}, outside data.root={root}; refused",
                        "fMRI outside root"))  # fmt: skip
            return None, out
        if not path.is_file():
            out.append(("error", f"fMRI file not found: {path}", "fMRI missing"))
            return None, out
        try:
            kind = input_kind(path)
        except ValueError as err:
            out.append(("error", str(err), "fMRI type unknown"))
            return None, out
        n, header_t_r, found = _read_run(path, kind, scans, atlas)
        out += found
        if any(severity == "error" for severity, _, _ in found):
            return None, out
        files = {}
        for column in FILE_COLUMNS:
            if extra[column][k] is None:
                continue
            file = _resolve(extra[column][k], manifest)
            if (root is not None and not inside(file, root)) or not file.is_file():
                why = "outside data.root" if file.is_file() else "not found"
                out.append(("error", f"{column} file {why}: {file}", f"{column} {why}"))
                return None, out
            files[column] = str(file)
        if "confounds" in files and _table_rows(Path(files["confounds"])) != n:
            rows = _table_rows(Path(files["confounds"]))
            out.append(("error", f"confounds table {files['confounds']} has {rows} rows but {path} has {n} volumes; "
                        "one row per volume needed", "confounds length"))  # fmt: skip
            return None, out
        if "mask" in files:
            if kind != "volume":
                out.append(("warning", f"mask {files['mask']} ignored: {path} is not a volume", ""))
                del files["mask"]
            else:
                import nibabel as nib

                img = nib.load(files["mask"])
                if tuple(img.shape[:3]) != tuple(nib.load(str(path)).shape[:3]):
                    out.append(("error", f"mask {files['mask']} has shape {img.shape}, not the grid of {path}",
                                "mask grid"))  # fmt: skip
                    return None, out
        t_r = manifest_t_r if manifest_t_r is not None else header_t_r
        if manifest_t_r is not None and header_t_r and abs(header_t_r - manifest_t_r) > 0.01 * manifest_t_r:
            out.append(("warning", f"t_r {manifest_t_r:g} s differs from the header's {header_t_r:g} s of {path}; "
                        "the manifest's is used", ""))  # fmt: skip
        runs.append(Run(str(path), files.get("confounds"), files.get("mask"), t_r, n))
    return runs, out


def _read_run(path: Path, kind: str, scans: ScanChecks | None, atlas: AtlasInfo | None):
    """(volumes, header TR or None, problems) of one run, reading headers only (volumes: ScanChecks' level)."""
    import nibabel as nib

    if kind == "parcels":
        try:
            n, p = parcel_table_shape(path)
        except ValueError as err:
            return 0, None, [("error", str(err), "series unreadable")]
        if atlas is not None and p != atlas.n_parcels:
            return n, None, [("error", f"{path}: {p} columns, but the atlas has {atlas.n_parcels} parcels; a "
                              "parcellated series needs one column per atlas label, in label order",
                              "parcel count")]  # fmt: skip
        return n, None, [] if n >= 2 else [("error", f"{path}: {n} time points", "too short")]
    if kind == "cifti":
        from brain.cifti import cifti_shape

        try:
            n, t_r, models = cifti_shape(path)
        except ValueError as err:
            return 0, None, [("error", str(err), "fMRI unreadable")]
        if atlas is not None and (atlas.kind != "cifti" or models != atlas.models):
            why = "a .dlabel.nii atlas" if atlas.kind != "cifti" else "an atlas on the same grayordinates"
            return n, t_r, [("error", f"{path}: a CIFTI dense series needs {why} (data.atlas=...)", "atlas mismatch")]
        return n, t_r, []
    try:
        img = nib.load(str(path), keep_file_open=True)  # the header; volumes only when the checks read them
    except Exception as err:  # nibabel raises several types
        return 0, None, [("error", f"fMRI file is not a readable NIfTI ({err}): {path}", "fMRI unreadable")]
    shape = img.header.get_data_shape()
    if len(shape) != 4 or shape[3] < 2:
        return 0, None, [("error", f"fMRI must be a 4D image with >= 2 volumes, got shape {shape}: {path}",
                          "fMRI not 4D")]  # fmt: skip
    if atlas is not None and atlas.kind != "volume":
        return 0, None, [("error", f"{path}: a NIfTI volume needs a label NIfTI atlas, not a .dlabel.nii",
                          "atlas mismatch")]  # fmt: skip
    t_r = float(img.header.get_zooms()[3])
    t_r = t_r / 1000.0 if img.header.get_xyzt_units()[1] == "msec" else t_r
    found = scans.check(img, path) if scans is not None else []
    return int(shape[3]), t_r, found
