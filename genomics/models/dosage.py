"""DosageEncoder: ALT allele dosages -> the additive genotype vector, the linear baseline DNA-model features must beat.

References: Purcell et al. 2007 (PLINK additive coding, mean imputation); genomics/dosage.py (the dosage table).

Input (B, S) dosages from genomics.transforms.GenotypeDosages (NaN = missing call). Missing calls are replaced by the
site's mean dosage over the training split; sites whose minor-allele frequency over the training split is below
`min_maf` (or that have no called training genotype) are dropped. Output (B, S_kept) float: no parameters; the
projection head standardises it (input_norm). The means and the kept-site index are buffers saved with the model, so
an exported model embeds another cohort with the training cohort's statistics.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DosageEncoder(nn.Module):
    def __init__(
        self,
        n_sites: int,  # S, features of the transform (one per ALT allele of every site in the regions)
        train_means: Tensor | None = None,  # (S,) mean dosage over the training split (NaN: no called genotype)
        min_maf: float = 0.0,  # drop sites whose training-split minor-allele frequency is below this
    ):
        super().__init__()
        if not 0.0 <= min_maf <= 0.5:
            raise ValueError(f"min_maf must be in [0, 0.5], got {min_maf}")
        means = torch.zeros(n_sites) if train_means is None else torch.as_tensor(train_means, dtype=torch.float32)
        if means.shape != (n_sites,):
            raise ValueError(f"train_means must have shape ({n_sites},), got {tuple(means.shape)}")
        alt_freq = means / 2  # (S,)
        maf = torch.minimum(alt_freq, 1 - alt_freq)
        keep = torch.isfinite(maf) & (maf >= min_maf) if min_maf > 0 else torch.isfinite(maf)
        self.n_sites, self.min_maf = n_sites, min_maf
        self.register_buffer("kept", torch.nonzero(keep).flatten())  # (S_kept,) indices of the kept sites
        self.register_buffer("means", torch.nan_to_num(means, nan=0.0))  # (S,) imputation values
        self.output_dim = int(keep.sum())
        if self.output_dim == 0:
            raise ValueError(f"no site left of {n_sites} after the min_maf={min_maf} filter on the training split")

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.n_sites:
            raise ValueError(f"DosageEncoder was built for {self.n_sites} sites, got {x.shape[-1]}")
        x = torch.where(torch.isnan(x), self.means.to(x.dtype), x)  # (B, S) mean-imputed
        return x[:, self.kept]  # (B, S_kept)
