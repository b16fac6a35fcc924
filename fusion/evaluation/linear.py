"""Classical imaging-genetics baselines: regularised CCA and PLS between the raw genomics and brain features, scored
with the same retrieval statistics on the same test subjects as the contrastive model (fusion.evaluation.retrieval).

- CCA (Hotelling 1936) regularised by PCA: each view standardised, reduced to its first `p` principal components
  (fit on train), then scikit-learn CCA with `k` components. PCA-CCA is the usual remedy when features outnumber
  subjects, where plain CCA finds perfect but meaningless correlations (e.g. Smith et al. 2015, HCP modes).
- PLS (Wold; McIntosh 1996 in neuroimaging): each view standardised, then scikit-learn PLSCanonical with `k`
  components: it maximises covariance, i.e. CCA with the within-view covariances shrunk fully to the identity.
Hyper-parameters (k, and p for CCA) are chosen by k-fold cross-validation on the training subjects only: the held-out
fold's retrieval (mean rank over both directions, divided by the fold size) is minimised. Subjects are embedded as their
canonical variates, each component standardised by its training scores, and compared by cosine similarity.
Names: "<method>/g2b/R@1", "<method>/g2b/R@1_lo", ..., "<method>/n_components", "cca/n_pcs". Library code: no
Lightning, no Hydra.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cross_decomposition import CCA, PLSCanonical
from sklearn.decomposition import PCA
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fusion.evaluation.retrieval import retrieval_statistics
from fusion.metrics import direction_ranks

METHODS = ("cca", "pls")


@dataclass
class TwoViewModel:
    """A fitted CCA/PLS: per-view preprocessing, the cross-decomposition, the training scores' spread."""

    views: tuple  # (genomics pipeline, brain pipeline): StandardScaler [-> PCA]
    n_pcs: int | None  # CCA: the first n_pcs principal components of each view are used (None: all columns)
    model: object  # sklearn CCA | PLSCanonical
    scale: tuple[np.ndarray, np.ndarray]  # (k,), (k,) standard deviations of the training canonical variates

    def preprocess(self, x_genomics: np.ndarray, x_brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return tuple(view.transform(x)[:, : self.n_pcs] for view, x in zip(self.views, (x_genomics, x_brain)))

    def embed(self, x_genomics: np.ndarray, x_brain: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(N, d_g), (N, d_b) -> two (N, k) unit vectors: the first k (all when None) standardised canonical
        variates, L2-normalised. Components are nested (NIPALS deflation: P^T W is triangular), so the first k of a
        K-component fit are the k-component fit."""
        u, v = self.model.transform(*self.preprocess(x_genomics, x_brain))
        u, v = u.reshape(len(u), -1)[:, :k] / self.scale[0][:k], v.reshape(len(v), -1)[:, :k] / self.scale[1][:k]
        unit = [z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12) for z in (u, v)]
        return unit[0], unit[1]


def fit_views(method: str, x_genomics: np.ndarray, x_brain: np.ndarray, n_pcs: int | None, seed: int = 0) -> tuple:
    """Per-view preprocessing fit on (N, d) views: StandardScaler, then for CCA a PCA to n_pcs components (nested:
    the first p < n_pcs of them are the p-component PCA); for PLS, when d > N, a PCA keeping every component: a
    rotation onto the subjects' span that PLS is invariant to (its weights lie in that span), N columns instead of d."""
    if method not in METHODS:
        raise ValueError(f"linear baseline must be one of {METHODS}, got {method!r}")
    views = []
    for x in (x_genomics, x_brain):
        steps = [StandardScaler()]
        if method == "cca":
            steps.append(PCA(n_components=min(n_pcs, *x.shape), random_state=seed))
        elif x.shape[1] > x.shape[0]:
            steps.append(PCA(n_components=None, svd_solver="full"))  # None: min(N, d) = N
        views.append(make_pipeline(*steps).fit(x))
    return tuple(views)


def fit_two_view(
    method: str,
    x_genomics: np.ndarray,
    x_brain: np.ndarray,
    n_components: int,
    n_pcs: int | None,
    seed: int = 0,
    views: tuple | None = None,  # fit_views(...) of these subjects with at least n_pcs components, to reuse
) -> TwoViewModel:
    """Fit `method` ("cca" with `n_pcs` principal components per view, or "pls") with `n_components` on (N, d) views."""
    views = views if views is not None else fit_views(method, x_genomics, x_brain, n_pcs, seed)
    unfitted = TwoViewModel(views, n_pcs if method == "cca" else None, None, (None, None))
    xs = unfitted.preprocess(x_genomics, x_brain)
    k = max(1, min(n_components, len(x_genomics) - 1, xs[0].shape[1], xs[1].shape[1]))
    model = (CCA if method == "cca" else PLSCanonical)(n_components=k, scale=False, max_iter=2000)
    u, v = model.fit(xs[0], xs[1]).transform(xs[0], xs[1])
    scale = tuple(np.maximum(z.reshape(len(z), -1).std(axis=0), 1e-12) for z in (u, v))
    return TwoViewModel(views, unfitted.n_pcs, model, scale)


def _heldout_ranks(method, xg, xb, grid, folds: KFold, seed) -> np.ndarray:
    """(len(grid),) mean over folds and directions of the held-out fold's mean rank / fold size (0 = perfect, ~0.5 =
    chance) for each (k, p) of the grid. Per fold the preprocessing is fit once (largest p) and per p the model once
    (largest k; smaller k are its first components)."""
    scores = np.zeros(len(grid))
    max_pcs = max((p for _, p in grid if p is not None), default=None)
    for tr, te in folds.split(xg):
        views = fit_views(method, xg[tr], xb[tr], max_pcs, seed)
        for p in dict.fromkeys(p for _, p in grid):
            ks = [k for k, q in grid if q == p]
            model = fit_two_view(method, xg[tr], xb[tr], max(ks), p, seed, views)
            for k in ks:
                u, v = model.embed(xg[te], xb[te], k)
                z = {"genomics": torch.from_numpy(u).float(), "brain": torch.from_numpy(v).float()}
                ranks = direction_ranks(z).values()
                scores[grid.index((k, p))] += np.mean([float(r.float().mean()) / len(te) for r in ranks])
    return scores / folds.get_n_splits()


def linear_baseline(
    method: str,  # "cca" | "pls"
    train_genomics: np.ndarray,  # (N_train, d_g) raw genomics features of the training subjects
    train_brain: np.ndarray,  # (N_train, d_b) raw brain features, same subjects and order
    test_genomics: np.ndarray,  # (N_test, d_g)
    test_brain: np.ndarray,  # (N_test, d_b)
    n_components: tuple[int, ...] = (1, 2, 4, 8, 16),  # k values tried
    n_pcs: tuple[int, ...] = (4, 8, 16, 32),  # CCA: principal components per view tried
    folds: int = 3,  # cross-validation folds on train
    seed: int = 0,  # seeds the folds, PCA and the bootstrap
    n_resamples: int = 1000,  # bootstrap resamples of the test retrieval interval
    level: float = 0.95,
) -> dict[str, float]:
    """Cross-validate (k, p) on train, refit on all of train, score test retrieval -> {"<method>/g2b/R@1": ...}."""
    xg, xb = np.asarray(train_genomics, dtype=np.float64), np.asarray(train_brain, dtype=np.float64)
    if len(xg) != len(xb) or len(test_genomics) != len(test_brain):
        raise ValueError(f"{method}: genomics and brain features must pair row by row (subjects)")
    if len(xg) < 4:
        raise ValueError(f"{method}: needs 4 or more training subjects, got {len(xg)}")
    n_folds = max(2, min(folds, len(xg) // 2))
    fold_train = len(xg) - -(-len(xg) // n_folds)  # the smallest fold's training part
    ks = sorted({min(k, fold_train - 1) for k in n_components}) or [1]
    ps = sorted({min(p, fold_train - 1) for p in n_pcs}) if method == "cca" else [None]
    grid = [(k, p) for k, p in itertools.product(ks, ps) if p is None or k <= p]
    splitter = KFold(n_folds, shuffle=True, random_state=seed)
    k, p = grid[int(np.argmin(_heldout_ranks(method, xg, xb, grid, splitter, seed)))]
    u, v = fit_two_view(method, xg, xb, k, p, seed).embed(np.asarray(test_genomics), np.asarray(test_brain))
    stats = retrieval_statistics(u, v, n_resamples=n_resamples, level=level, n_permutations=0, seed=seed)
    out = {f"{method}/{name}": value for name, value in stats.items() if name != "n"}
    out[f"{method}/n_components"] = float(k)
    if p is not None:
        out[f"{method}/n_pcs"] = float(p)
    return out
