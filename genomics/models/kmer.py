"""k-mer spectrum of each subject's haplotype sequences per region: the alignment-free genomics baseline.

Input: token ids (B, R, H, L) from genomics.alphabet (A=7, C=8, G=9, T=10; anything else breaks a k-mer).
Output: (B, R * n_kmers) relative k-mer frequencies per region, haplotypes summed (a dosage-like count divided by the
number of valid k-mers of the two haplotypes). With `canonical=True` a k-mer and its reverse complement share one bin,
so the feature is strand-invariant. No trainable parameters: later encoders must beat this.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from genomics.alphabet import A_ID, T_ID, reverse_complement


def _canonical_index(k: int) -> tuple[Tensor, int]:
    """Map each of the 4^k k-mer codes to a canonical bin (min of code and its reverse-complement code)."""
    codes = torch.arange(4**k)
    digits = torch.stack([(codes // 4**j) % 4 for j in range(k)], dim=-1)  # (4^k, k), digit j = base at position k-1-j
    rc = ((3 - digits) * torch.tensor([4 ** (k - 1 - j) for j in range(k)])).sum(-1)  # complement, reversed order
    canon = torch.minimum(codes, rc)
    uniq, index = torch.unique(canon, return_inverse=True)
    return index, len(uniq)


class KmerSpectrum(nn.Module):
    """(B, R, H, L) ids -> (B, R * n_kmers) k-mer frequencies; n_kmers = 4^k, or its canonical count."""

    def __init__(self, n_regions: int, k: int = 4, canonical: bool = True):
        super().__init__()
        self.k, self.n_regions, self.canonical = k, n_regions, canonical
        index, n_bins = _canonical_index(k) if canonical else (torch.arange(4**k), 4**k)
        self.register_buffer("bin_of_code", index, persistent=False)  # (4^k,)
        self.n_kmers = n_bins
        self.output_dim = n_regions * n_bins

    @staticmethod
    def kmer_names(k: int, canonical: bool = True) -> list[str]:
        """Bin names in output order (the lexicographically smaller of a k-mer and its reverse complement)."""
        names = ["".join(p) for p in itertools.product("ACGT", repeat=k)]
        if not canonical:
            return names
        return sorted({min(n, reverse_complement(n)) for n in names})

    def forward(self, ids: Tensor) -> Tensor:
        b, r, h, length = ids.shape
        if r != self.n_regions:
            raise ValueError(f"KmerSpectrum was built for {self.n_regions} regions, got input with {r}")
        base = ids - A_ID  # (B, R, H, L), 0..3 for A, C, G, T
        valid = (ids >= A_ID) & (ids <= T_ID)
        base = torch.where(valid, base, torch.zeros_like(base))
        windows = base.unfold(-1, self.k, 1)  # (B, R, H, L-k+1, k)
        ok = valid.unfold(-1, self.k, 1).all(-1)  # (B, R, H, L-k+1)
        weights = torch.tensor([4 ** (self.k - 1 - j) for j in range(self.k)], device=ids.device)
        codes = (windows * weights).sum(-1)  # (B, R, H, L-k+1)
        bins = self.bin_of_code[codes]  # (B, R, H, L-k+1)
        counts = torch.zeros(b, r, self.n_kmers, device=ids.device)  # haplotypes summed
        counts.scatter_add_(-1, bins.flatten(2), ok.flatten(2).float())  # (B, R, n_kmers)
        totals = ok.flatten(2).sum(-1, keepdim=True).clamp_min(1)  # (B, R, 1)
        return (counts / totals).flatten(1)  # (B, R * n_kmers)
