"""Functional connectivity (FC): the honest brain baseline every fMRI encoder must beat.

Input: parcel time series windows (B, W, T, P) from brain.parcellation.ParcelTimeSeries.
Output: (B, P*(P-1)/2) upper triangle (diagonal discarded) of each scan's connectivity, averaged over windows:
  kind="correlation": Pearson correlation (covariance="empirical", batched in torch) or nilearn's ConnectivityMeasure
                      with the Ledoit-Wolf shrunk covariance (covariance="ledoit_wolf"); Fisher z (arctanh) by default;
  kind="tangent":     tangent-space embedding around the group mean of the *training* scans (Varoquaux et al. 2010);
                      needs fit() on the training split; the whitening matrix is a buffer, so checkpoints carry it.
Padding: frames whose every parcel is NaN are padding (brain.windows.collate_windows pads whole scans of different
lengths to the batch's longest) and are ignored: each window's connectivity is computed over its own valid frames only
(the masked Pearson takes mean and norm over them; the nilearn paths get each window's valid frames), so a padded
batch gives every subject the features of its unpadded scan. A NaN inside a frame that is not all NaN is an error.
No trainable parameters.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn


def _vectorize(mats: np.ndarray) -> np.ndarray:
    """(N, P, P) symmetric -> (N, P*(P-1)/2) strict upper triangle, row-major."""
    iu = np.triu_indices(mats.shape[-1], k=1)
    return mats[:, iu[0], iu[1]]


def valid_frames(x: Tensor) -> Tensor:
    """(N, T, P) -> (N, T) bool: the frames that are not NaN padding (padding = every parcel NaN). Errors on a NaN in
    a frame that is not padding, and on a window with fewer than 2 valid frames (no correlation)."""
    nan = torch.isnan(x)
    pad = nan.all(-1)
    if bool((nan.any(-1) & ~pad).any()):
        raise ValueError(
            "FunctionalConnectivity: NaN values inside frames that are not padding (only whole NaN frames are "
            "padding); check the parcel series for NaNs (e.g. a parcellated .npy table)"
        )
    n = (~pad).sum(1)
    if bool((n < 2).any()):
        raise ValueError(f"FunctionalConnectivity: a window has {int(n.min())} valid frames; correlations need >= 2")
    return ~pad


def _map_eigenvalues(fn, mats: np.ndarray) -> np.ndarray:
    """Apply fn to the eigenvalues of each symmetric matrix in (N, P, P)."""
    vals, vecs = np.linalg.eigh(mats)
    return (vecs * fn(vals)[..., None, :]) @ np.swapaxes(vecs, -1, -2)


class FunctionalConnectivity(nn.Module):
    """(B, W, T, P) parcel series -> (B, P*(P-1)/2) connectivity features."""

    def __init__(
        self,
        n_parcels: int,
        kind: str = "correlation",  # correlation | tangent
        fisher_z: bool = True,  # arctanh of correlations
        covariance: str = "empirical",  # empirical (plain Pearson) | ledoit_wolf (nilearn's default, shrunk)
    ):
        super().__init__()
        if kind not in ("correlation", "tangent"):
            raise ValueError(f"kind must be 'correlation' or 'tangent', got {kind!r}")
        if covariance not in ("ledoit_wolf", "empirical"):
            raise ValueError(f"covariance must be 'ledoit_wolf' or 'empirical', got {covariance!r}")
        self.n_parcels, self.kind, self.fisher_z, self.covariance = n_parcels, kind, fisher_z, covariance
        self.output_dim = n_parcels * (n_parcels - 1) // 2
        # tangent space: W = mean^{-1/2} of the training covariances (identity until fit)
        self.register_buffer("whitening", torch.eye(n_parcels, dtype=torch.float64))
        self.register_buffer("fitted", torch.tensor(kind == "correlation"))

    def _measure(self, kind: str):
        from nilearn.connectome import ConnectivityMeasure
        from sklearn.covariance import EmpiricalCovariance, LedoitWolf

        estimator = LedoitWolf(store_precision=False) if self.covariance == "ledoit_wolf" else EmpiricalCovariance()
        return ConnectivityMeasure(cov_estimator=estimator, kind=kind, standardize="zscore_sample")

    @staticmethod
    def _pearson(x: Tensor, valid: Tensor) -> Tensor:
        """(N, T, P) with (N, T) valid frames -> (N, P, P) Pearson correlation matrices over the valid frames."""
        keep = valid.unsqueeze(-1)  # (N, T, 1)
        x = torch.where(keep, x, 0.0)
        mean = x.sum(1, keepdim=True) / valid.sum(1).view(-1, 1, 1)
        x = torch.where(keep, x - mean, 0.0)
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)  # constant parcels get zero correlation
        return x.transpose(1, 2) @ x  # (N, P, P)

    def _covariances(self, series: list[np.ndarray]) -> np.ndarray:
        """[(T_i, P)] -> (N, P, P) correlations (kind correlation) or covariances of z-scored series (tangent)."""
        kind = "correlation" if self.kind == "correlation" else "covariance"
        return self._measure(kind).fit_transform(series)

    @staticmethod
    def _series(x: Tensor) -> list[np.ndarray]:
        """(..., T, P) windows -> their valid frames as float64 arrays [(T_i, P)] (NaN padding frames removed)."""
        x = x.reshape(-1, *x.shape[-2:]).double().cpu()
        valid = valid_frames(x)
        return [w[v].numpy() for w, v in zip(x, valid)]

    def fit(self, inputs: Iterable[Tensor]) -> None:
        """Fit the tangent reference on training inputs, each (W, T, P) or (B, W, T, P) (NaN padding frames
        ignored); no-op for correlation."""
        if self.kind != "tangent":
            return
        series = [w for x in inputs for w in self._series(x)]
        measure = self._measure("tangent").fit(series)
        whitening = measure.whitening_  # mean^{-1/2} of the training covariances (geometric mean)
        self.whitening.copy_(torch.from_numpy(whitening))
        self.fitted.fill_(True)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        b, w, t, p = x.shape
        if p != self.n_parcels:
            raise ValueError(f"FunctionalConnectivity was built for {self.n_parcels} parcels, got {p}")
        if not bool(self.fitted):
            raise RuntimeError("tangent connectivity needs fit() on the training scans before use")
        if self.kind == "correlation" and self.covariance == "empirical":
            x = x.reshape(b * w, t, p).double()
            mats = self._pearson(x, valid_frames(x)).clamp(-1, 1)  # (B*W, P, P)
            if self.fisher_z:
                mats = torch.arctanh(mats.clamp(-0.999999, 0.999999))
            iu = torch.triu_indices(p, p, offset=1, device=x.device)
            return mats[:, iu[0], iu[1]].float().reshape(b, w, -1).mean(1)  # (B, P*(P-1)/2)
        mats = self._covariances(self._series(x))  # (B*W, P, P)
        if self.kind == "tangent":
            wm = self.whitening.cpu().numpy()
            mats = _map_eigenvalues(np.log, wm @ mats @ wm)
        elif self.fisher_z:
            mats = np.arctanh(np.clip(mats, -0.999999, 0.999999))
        feats = torch.from_numpy(_vectorize(mats)).float().reshape(b, w, -1).mean(1)  # (B, P*(P-1)/2)
        return feats.to(x.device)
