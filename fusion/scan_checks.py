"""Checks of each subject's fMRI scan against the atlas, for fusion.cohort (library code).

    scans = ScanChecks(atlas_img, labels, level)       # level: "cheap" | "full" | "deep"
    for severity, message, reason in scans.check(img, path): ...   # img: nibabel image, header already read

Every level (header only): the atlas, resampled to the scan's grid by nearest neighbour (as the parcel masker does
when the grids differ), must keep every parcel inside the scan's field of view. "full" also reads three volumes per
scan (first, middle, last; nibabel dataobj slicing, never the whole scan) and "deep" every volume (in chunks):
NaN/Inf voxels (an error inside the parcels, which the loader would read as 0; a warning outside them) and parcels
that are all zero in every volume read (no signal: the scan's mask misses them); "deep" also finds parcels whose mean
never changes over time. Grids are compared once per distinct (shape, affine).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

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
