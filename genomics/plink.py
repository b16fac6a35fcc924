"""PLINK 2 (.pgen/.pvar/.psam) and PLINK 1 (.bed/.bim/.fam) genotype sets as a genomics.genotypes.GenotypeSource.

References: PLINK 2 file formats, https://www.cog-genomics.org/plink/2.0/formats (.pvar: `##` meta lines, an optional
`#CHROM POS ID REF ALT ...` header, headerless = .bim column order; `.pvar.zst` the same text zstd-compressed, as
`--make-pgen vzs` writes it, read with the `zstandard` package; .psam: `#FID IID ...` or `#IID ...` header,
headerless = .fam); pgenlib's Python API (2.0/Python/python_api.txt in plink-ng: PgenReader reads .pgen and
variant-major .bed, allele 0 = REF = the .bim's last column, -9 = missing; `allele_idx_offsets` for multi-allelic
variants).

    source = PlinkGenotypes(Path("cohort.pgen"), "pgen")   # or (Path("cohort.bed"), "bed")

The variant table and the sample ids are read whole with pandas (a malformed line is an error naming the file and
line); genotypes are read with pgenlib, only for the variants inside the regions, in blocks of at most BLOCK_CALLS
allele slots. Sample ids are the IIDs (the FID, when present, is not part of the id: `plink2 --vcf` writes the VCF
sample name as IID). Allele order and haploid calls: genomics.genotypes' module docstring.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from genomics.contigs import match_contig
from genomics.errors import GenomicsInputError
from genomics.genotypes import MISSING, PLINK1_MAGIC, GenotypeSource, Variant, plink_files

BLOCK_CALLS = 1 << 24  # allele slots (variants x 2 x samples) read per pgenlib call: 64 MiB of int32
NUMERIC_CONTIGS = {"23": "X", "24": "Y", "26": "MT"}  # PLINK 1 chromosome codes
BIM_COLUMNS = ("#CHROM", "ID", "CM", "POS", "ALT", "REF")  # .bim (and headerless .pvar) order: A1 = ALT, A2 = REF
NO_ALT = {".", "0"}  # an absent ALT (.pvar) or PLINK 1's missing allele code (a monomorphic .bim line)


@contextmanager
def open_text(path: Path):
    """The text of a PLINK file, zstd-decompressed on the fly when its name ends in .zst; a corrupt stream is a
    GenomicsInputError naming the file."""
    if path.name.lower().endswith(".zst"):
        import zstandard

        try:
            with zstandard.open(path, "rt", encoding="utf-8", errors="replace") as fh:
                yield fh
        except zstandard.ZstdError as err:
            raise GenomicsInputError(f"{path}: not a readable zstd stream ({err}); check it with `zstd -t`") from err
    else:
        with open(path, encoding="utf-8", errors="replace") as fh:
            yield fh


def read_variant_table(path: Path) -> tuple[pd.DataFrame, int]:
    """(table with columns #CHROM, POS (int64), ID, REF, ALT, one row per variant; the file line of row 0), from a
    .pvar, .pvar.zst or .bim."""
    skip, header = 0, None
    with open_text(path) as fh:
        for line in fh:
            if line.startswith("##"):
                skip += 1
                continue
            if line.startswith("#"):
                header = line.lstrip("#").split()
                header[0] = "#" + header[0]
                skip += 1
            break
    bim = header is None
    try:
        with open_text(path) as fh:
            table = pd.read_csv(
                fh, sep=r"\s+" if bim else "\t", header=None, skiprows=skip, dtype=str, keep_default_na=False,
                na_filter=False, names=None if bim else header, engine="c",
            )  # fmt: skip
    except pd.errors.EmptyDataError:
        table = pd.DataFrame(columns=list(BIM_COLUMNS))
    except (pd.errors.ParserError, ValueError) as err:
        raise GenomicsInputError(f"{path}: malformed variant line ({err}); every line needs the same columns") from err
    if bim:
        if table.shape[1] not in (5, 6):
            raise GenomicsInputError(
                f"{path}:{skip + 1}: {table.shape[1]} columns; a .bim (or headerless .pvar) line has 6: "
                "CHROM ID CM POS A1 A2"
            )
        table.columns = list(BIM_COLUMNS if table.shape[1] == 6 else ("#CHROM", "ID", "POS", "ALT", "REF"))
    absent = [c for c in ("#CHROM", "POS", "REF", "ALT") if c not in table.columns]
    if absent:
        raise GenomicsInputError(f"{path}:{skip}: the header lacks column(s) {absent}; got {header}")
    if "ID" not in table.columns:
        table["ID"] = "."
    pos = pd.to_numeric(table["POS"], errors="coerce")
    bad = np.flatnonzero(~(pos > 0).to_numpy())
    if len(bad):
        i = int(bad[0])
        raise GenomicsInputError(
            f"{path}:{skip + i + 1}: POS must be a positive integer, got {table['POS'].iloc[i]!r} ({len(bad)} such "
            "line(s))"
        )
    table["POS"] = pos.astype(np.int64)
    table["#CHROM"] = table["#CHROM"].replace(NUMERIC_CONTIGS)
    return table[["#CHROM", "POS", "ID", "REF", "ALT"]], skip + 1


def read_sample_ids(path: Path) -> list[str]:
    """The IIDs of a .psam (header `#FID IID ...` / `#IID ...`, or headerless) or .fam (column 2)."""
    skip, header = 0, None
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("##"):
                skip += 1
                continue
            if line.startswith("#"):
                header = line.lstrip("#").split()
                skip += 1
            break
    try:
        table = pd.read_csv(
            path, sep=r"\s+", header=None, skiprows=skip, dtype=str, keep_default_na=False, na_filter=False
        )
    except pd.errors.EmptyDataError:
        table = pd.DataFrame()
    except (pd.errors.ParserError, ValueError) as err:
        raise GenomicsInputError(f"{path}: malformed sample line ({err})") from err
    if table.empty:
        raise GenomicsInputError(f"{path}: no samples; it must list one sample per line")
    if header is not None:
        if "IID" not in header:
            raise GenomicsInputError(f"{path}:{skip}: the header lacks an IID column; got {header}")
        column = header.index("IID")
    else:
        column = 1  # .fam: FID IID PAT MAT SEX PHENO
    if table.shape[1] <= column:
        raise GenomicsInputError(f"{path}:{skip + 1}: {table.shape[1]} column(s), no IID (column {column + 1})")
    return table.iloc[:, column].tolist()


class PlinkGenotypes(GenotypeSource):
    """A .pgen/.pvar/.psam or .bed/.bim/.fam set (module docstring)."""

    def __init__(self, path: Path, fmt: str):
        import pgenlib

        super().__init__(path)
        self.format = fmt
        variants_file, samples_file = plink_files(path, fmt)
        self._samples_file, self._variants_file = samples_file, variants_file
        if fmt == "bed":
            with open(path, "rb") as fh:
                magic = fh.read(3)
            if magic != PLINK1_MAGIC:
                raise GenomicsInputError(
                    f"{path}: not a variant-major PLINK 1 .bed (its first bytes are {magic!r}, not {PLINK1_MAGIC!r}); "
                    "rewrite it with `plink2 --bfile PREFIX --make-bed --out NEW`; a regions BED belongs in "
                    "data.regions"
                )
        table, self._first_line = read_variant_table(variants_file)
        self._samples = read_sample_ids(samples_file)
        self._contig = table["#CHROM"].to_numpy(dtype=object)  # (V,)
        self._pos = table["POS"].to_numpy()  # (V,) 1-based
        self._id = table["ID"].to_numpy(dtype=object)
        self._ref = table["REF"].to_numpy(dtype=object)
        self._alt = [tuple(a for a in alt.split(",") if a not in NO_ALT) for alt in table["ALT"]]
        n_alleles = np.array([max(2, 1 + len(a)) for a in self._alt], dtype=np.uintp)
        offsets = None
        if fmt == "pgen" and len(n_alleles) and n_alleles.max() > 2:
            offsets = np.concatenate([[0], np.cumsum(n_alleles)]).astype(np.uintp)  # (V + 1,)
        n_variants, n_samples = len(table), len(self._samples)
        files = f"{path} ({variants_file.name} lists {n_variants} variants, {samples_file.name} {n_samples} samples)"
        try:
            if offsets is not None:
                self._reader = pgenlib.PgenReader(str(path).encode(), allele_idx_offsets=offsets)
            else:
                self._reader = pgenlib.PgenReader(
                    str(path).encode(), raw_sample_ct=len(self._samples), variant_ct=len(table)
                )
        except RuntimeError as err:
            raise GenomicsInputError(f"{files}: pgenlib cannot read it ({err}); the three must be one set") from err
        counts = (self._reader.get_raw_sample_ct(), self._reader.get_variant_ct())
        if counts != (len(self._samples), len(table)):
            self._reader.close()
            raise GenomicsInputError(
                f"{files}: the {fmt} holds {counts[0]} samples and {counts[1]} variants; the three files must be one "
                "set (written by the same plink2 command)"
            )
        self._by_contig: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # contig -> (variant indices, sorted POS)
        for contig, rows in pd.Series(np.arange(len(table))).groupby(self._contig, sort=False):
            rows = rows.to_numpy()
            order = np.argsort(self._pos[rows], kind="stable")
            self._by_contig[contig] = (rows[order], self._pos[rows][order])

    @property
    def samples(self) -> list[str]:
        return list(self._samples)

    @property
    def samples_file(self) -> Path:
        return self._samples_file

    @property
    def variants_file(self) -> Path:
        return self._variants_file

    @property
    def contigs(self) -> set[str]:
        return set(self._by_contig)

    def _indices(self, region) -> np.ndarray:
        """(K,) indices of the variants whose first base is inside `region`, in file order."""
        contig = match_contig(region.contig, self._by_contig)
        if contig is None:
            return np.zeros(0, dtype=np.int64)
        rows, pos = self._by_contig[contig]
        lo, hi = np.searchsorted(pos, region.start + 1, "left"), np.searchsorted(pos, region.end, "right")
        return np.sort(rows[lo:hi])

    def _variant(self, k: int) -> Variant:
        contig, pos, id_, ref = str(self._contig[k]), int(self._pos[k]), str(self._id[k]), str(self._ref[k])
        return Variant(contig, pos, id_, ref, self._alt[k], self._first_line + k)

    def variants(self, regions, limit=None):
        n = 0
        for i, region in enumerate(regions):
            for k in self._indices(region):
                if limit is not None and n >= limit:
                    return
                n += 1
                yield i, self._variant(int(k))

    def genotypes(self, regions):
        n = len(self._samples)
        block = max(1, BLOCK_CALLS // (2 * n))
        for region in regions:
            indices = self._indices(region).astype(np.uint32)
            for b in range(0, len(indices), block):
                chunk = np.ascontiguousarray(indices[b : b + block])
                out = np.empty((len(chunk), 2 * n), dtype=np.int32)  # (K, 2N): sample j's alleles at 2j, 2j + 1
                self._reader.read_alleles_list(chunk, out)
                out[out < 0] = MISSING  # pgenlib's -9
                calls = out.astype(np.int16).reshape(len(chunk), n, 2)  # (K, N, 2)
                for k, alleles in zip(chunk, calls):
                    yield self._variant(int(k)), alleles

    def close(self) -> None:
        self._reader.close()
