"""Subject id -> token ids of both personal haplotypes of every region: the genomics input of genobrain.

    tokens = PersonalSequenceTokens("ref.fa", "cohort.vcf.gz", read_bed("regions.bed"))
    x = tokens("sub-0001")          # LongTensor (R, 2, L): regions x haplotypes (GT order) x positions
    tokens = PersonalSequenceTokens(..., sites=True)
    x = tokens("sub-0001")          # {"ids": (R, 2, L), "sites": (R, 2, S)}; tokens.encoder_inputs(): the reference's

Ids come from `genomics.alphabet.encode` (published Caduceus tokenizer ids; N -> [PAD] unless n_as="N"; soft-masked
bases are upper-cased there). Each haplotype is left-padded with [PAD] by `genomics.alphabet.pad_left`.
Length rule, the same L for every subject: L = max_len when given (longer haplotypes keep their central max_len
bases, as pad_left does), else the longest region plus the largest growth its VCF sites allow (the sum, over the
region's sites fully inside it, of the longest insertion among their ALTs). L depends on the VCF's sites only, never
on one subject's genotypes, so no subject is truncated and every batch stacks. `length` gives it (reads the VCF once).
Sites (`sites=True`): S = the most VCF sites any region has; sites[r, h, s] is the token offset, in ids[r, h], of
site s of region r (VCF order; its first REF base, carried through the indels before it by the consensus coordinate
map, PersonalHaplotypes.site_offsets), -1 for padding (a region with fewer sites) and for a site cropped away by
max_len. The same site has the same index s in every subject. `encoder_inputs()` then gives the encoder the reference
sequence of every region tokenised the same way (`reference_ids` (R, L), `reference_sites` (R, S)), which
fusion.app.build passes to its constructor by parameter name. torch's default_collate batches the dict.
The constructor opens nothing; pysam handles open on first use in each process, so the transform pickles into
dataloader workers.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from genomics.alphabet import encode, pad_left
from genomics.errors import SampleNotFound
from genomics.personal import PersonalHaplotypes
from genomics.regions import Region


class PersonalSequenceTokens:
    def __init__(
        self,
        reference: str | Path,
        vcf: str | Path,
        regions: Sequence[Region],  # parsed regions (the cohort's, after exclusion; or genomics.regions.read_bed)
        max_len: int | None = None,  # fixed L (crop to the centre / left-pad); None: the rule in the module docstring
        n_as: str = "PAD",  # "PAD": N -> [PAD] (published models' convention); "N": keep the N id
        sites: bool = False,  # also return each VCF site's token offsets: {"ids", "sites"} (module docstring)
    ):
        if n_as not in ("PAD", "N"):
            raise ValueError(f"n_as must be 'PAD' or 'N', got {n_as!r}")
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be a positive number of bases or None, got {max_len}")
        self.reference, self.vcf, self.regions = reference, vcf, regions
        self.max_len, self.n_as, self.sites = max_len, n_as, sites
        self._haps: PersonalHaplotypes | None = None
        self._length: int | None = max_len
        self._n_sites: int | None = None

    def __getstate__(self):  # no open handles or caches into worker processes
        return {**self.__dict__, "_haps": None}

    @property
    def haplotypes(self) -> PersonalHaplotypes:
        if self._haps is None:
            self._haps = PersonalHaplotypes(self.reference, self.vcf, self.regions)
        return self._haps

    @property
    def n_regions(self) -> int:
        return len(self.haplotypes.regions)

    @property
    def length(self) -> int:
        """L, the last axis of every output."""
        if self._length is None:
            self._length = self.haplotypes.max_length()
        return self._length

    @property
    def n_sites(self) -> int:
        """S, the last axis of `sites`: the most VCF sites any region has."""
        if self._n_sites is None:
            haps = self.haplotypes
            self._n_sites = max((len(haps.region_genotypes(i).variants) for i in range(len(haps.regions))), default=0)
        return self._n_sites

    def _tokens(self, seq: str, offsets: np.ndarray, ids_out: np.ndarray, sites_out: np.ndarray) -> None:
        """Encode + left-pad (or centre-crop) one sequence into ids_out (L,), its site offsets into sites_out (S,)."""
        length = len(ids_out)
        ids_out[:] = pad_left(encode(seq, self.n_as), length)
        shift = length - len(seq) if len(seq) < length else -((len(seq) - length) // 2)  # pad | crop, as pad_left
        tok = offsets + shift
        sites_out[:] = -1
        sites_out[: len(tok)] = np.where((tok >= 0) & (tok < length), tok, -1)

    def __call__(self, subject_id: str) -> torch.Tensor | dict[str, torch.Tensor]:
        haps = self.haplotypes
        haps.sample_index(subject_id)  # KeyError naming the subject and the VCF
        length, n_regions = self.length, len(haps.regions)
        out = np.empty((n_regions, 2, length), dtype=np.int64)  # (R, 2, L)
        sites = np.empty((n_regions, 2, self.n_sites), dtype=np.int64) if self.sites else None  # (R, 2, S)
        for i in range(n_regions):
            offsets = haps.site_offsets(subject_id, i) if self.sites else None  # (2, V)
            for h, seq in enumerate(haps.haplotypes(subject_id, i)):
                if sites is None:
                    out[i, h] = pad_left(encode(seq, self.n_as), length)
                else:
                    self._tokens(seq, offsets[h], out[i, h], sites[i, h])
        if sites is None:
            return torch.from_numpy(out)
        return {"ids": torch.from_numpy(out), "sites": torch.from_numpy(sites)}

    def encoder_inputs(self) -> dict:
        """With sites=True: the reference of every region, tokenised like a haplotype (fusion.app.build passes these
        to the encoder by parameter name): reference_ids (R, L), reference_sites (R, S). Else nothing."""
        if not self.sites:
            return {}
        haps = self.haplotypes
        ids = np.empty((len(haps.regions), self.length), dtype=np.int64)  # (R, L)
        sites = np.empty((len(haps.regions), self.n_sites), dtype=np.int64)  # (R, S)
        for i in range(len(haps.regions)):
            self._tokens(haps.reference_sequence(i), haps.reference_site_offsets(i), ids[i], sites[i])
        return {"reference_ids": torch.from_numpy(ids), "reference_sites": torch.from_numpy(sites)}


class GenotypeDosages:
    """Subject id -> FloatTensor (S,) ALT allele dosages (0/1/2, NaN = missing) at every genotype site inside the
    regions, one feature per ALT (genomics.dosage). `genotypes` is a VCF/BCF, a PLINK 2 .pgen or a PLINK 1 .bed
    (genomics.genotypes; the cohort's data.genotypes). The whole table is read once, on first use, per process.

    `encoder_inputs()` gives the encoder what it needs to be built (fusion.app.build passes it on by parameter name):
    n_sites, and the ALT frequencies and mean dosages over `train_subjects` only (the training split), so neither
    the minor-allele-frequency filter nor the imputation ever sees validation or test subjects.
    """

    def __init__(
        self,
        genotypes: str | Path,  # VCF/BCF, .pgen (with .pvar/.psam) or .bed (with .bim/.fam)
        regions: Sequence[Region],  # parsed regions (the cohort's, after exclusion)
        train_subjects: Sequence[str] | None = None,  # samples that frequencies and means come from; None = all
    ):
        self.genotypes, self.regions = genotypes, list(regions)
        self.train_subjects = None if train_subjects is None else list(train_subjects)
        self._table = None  # DosageTable, read on first use
        self._columns: dict[str, int] = {}

    def __getstate__(self):  # workers read the table themselves
        return {**self.__dict__, "_table": None, "_columns": {}}

    @property
    def table(self):
        if self._table is None:
            from genomics.dosage import read_dosages

            self._table = read_dosages(self.genotypes, self.regions)
            self._columns = {s: i for i, s in enumerate(self._table.samples)}
        return self._table

    def encoder_inputs(self) -> dict:
        table = self.table
        train = table.dosages
        if self.train_subjects is not None:  # training subjects that are samples here (a further genetic input may
            present = [s for s in self.train_subjects if s in self._columns]  # lack some: fusion.multi_input)
            if not present:
                raise ValueError(f"{self.genotypes}: none of the {len(self.train_subjects)} training subjects is a "
                                 f"sample of it; check the sample names against the manifest's subject_id")  # fmt: skip
            train = table.dosages[:, table.columns(present)]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a site with no called training genotype -> NaN
            means = np.nanmean(train, axis=1)  # (S,)
        return {"n_sites": len(table.sites), "train_means": torch.from_numpy(means.astype(np.float32))}

    def __call__(self, subject_id: str) -> torch.Tensor:
        table = self.table
        if subject_id not in self._columns:
            raise SampleNotFound(f"subject {subject_id!r} is not a sample of {self.genotypes}")
        return torch.from_numpy(np.ascontiguousarray(table.dosages[:, self._columns[subject_id]]))  # (S,)
