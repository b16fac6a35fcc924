"""embedding_map.png: a 2-D map of every exported subject's embeddings, coloured by a manifest covariate.

One panel per embedding (fused, genomics, brain), each reduced to 2-D on its own by scikit-learn PCA (method=pca) or
UMAP (method=umap, when umap-learn is installed; McInnes et al. 2018, umap-learn's UMAP(random_state=0)); colour = the
`color_by` covariate (a colorbar for a continuous one, a legend for a categorical one; missing values grey), marker =
the subject's split. Drawn with matplotlib's Agg backend (no display needed) and written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from fusion.app.resilience import write_atomic
from fusion.errors import FusionInputError

METHODS = ("pca", "umap")
PANELS = ("fused", "genomics", "brain")
MARKERS = {"train": "o", "val": "s", "test": "^"}  # any other split: "D"
MISSING = "#b0b0b0"


def pick_color_by(color_by: str | None, covariates: dict[str, str]) -> str | None:
    """The covariate to colour by: `color_by` (an error listing the covariates if the manifest has none of that
    name), or by default the first continuous covariate, else the first one, else None (colour by split)."""
    if color_by is not None:
        if color_by not in covariates:
            listed = ", ".join(f"{k} ({v})" for k, v in covariates.items()) or "none"
            raise FusionInputError(
                f"color_by={color_by!r} is not a covariate of the cohort's manifest; its covariates: {listed}"
            )
        return color_by
    continuous = [k for k, v in covariates.items() if v == "continuous"]
    return (continuous or list(covariates) or [None])[0]


def check_method(method: str) -> None:
    if method not in METHODS:
        raise FusionInputError(f"method={method!r}: must be one of {', '.join(METHODS)}")
    if method == "umap":
        try:
            import umap  # noqa: F401
        except ImportError:
            raise FusionInputError("method=umap needs umap-learn (pip install umap-learn); or use method=pca") from None


def reduce_2d(x: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2). Fewer than 3 subjects: the components there are (none for one subject), zero-padded."""
    n = len(x)
    if method == "umap" and n > 3:
        import umap

        return umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed).fit_transform(x)
    from sklearn.decomposition import PCA

    k = min(2, n - 1, x.shape[1])  # PCA needs two subjects for one component
    out = np.zeros((n, 2))
    if k > 0:
        out[:, :k] = PCA(n_components=k, random_state=seed).fit_transform(x)
    return out


def draw_map(embeddings: dict[str, np.ndarray], meta: pd.DataFrame, color_by: str | None, kind: str | None,
             method: str, path: Path, title: str = "") -> Path:  # fmt: skip
    """Write `path` (PNG): one panel per PANELS embedding; `kind` is "continuous" or "categorical" (color_by's)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    splits = list(dict.fromkeys(meta["split"].astype(str)))
    values = meta[color_by] if color_by else meta["split"].astype(str)
    continuous = color_by is not None and kind == "continuous"
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4.6), squeeze=False, layout="constrained")
    if continuous:
        vals = pd.to_numeric(values, errors="coerce").to_numpy(float)
        finite = np.isfinite(vals)
        norm = plt.Normalize(*(np.nanmin(vals[finite]), np.nanmax(vals[finite])) if finite.any() else (0, 1))
        cmap = plt.get_cmap("viridis")
    else:
        cats = pd.Series(values, dtype=object).where(pd.notna(values), None)
        levels = sorted({str(v) for v in cats if v is not None})
        palette = plt.get_cmap("tab10" if len(levels) <= 10 else "tab20")
        colors = {lev: palette(i % palette.N) for i, lev in enumerate(levels)}
        point_colors = [colors[str(v)] if v is not None else MISSING for v in cats]
    for ax, key in zip(axes[0], PANELS):
        xy = reduce_2d(np.asarray(embeddings[key], dtype=np.float64), method)
        for split in splits:
            sel = (meta["split"].astype(str) == split).to_numpy()
            marker = MARKERS.get(split, "D")
            if continuous:
                ok = sel & finite
                ax.scatter(*xy[sel & ~finite].T, c=MISSING, marker=marker, s=18, linewidths=0)
                ax.scatter(*xy[ok].T, c=vals[ok], cmap=cmap, norm=norm, marker=marker, s=18, linewidths=0)
            else:
                ax.scatter(*xy[sel].T, c=[point_colors[i] for i in np.flatnonzero(sel)], marker=marker, s=18,
                           linewidths=0)  # fmt: skip
        axis = "PC" if method == "pca" else "UMAP"
        ax.set(title=key, xlabel=f"{axis} 1", ylabel=f"{axis} 2")
    handles = [Line2D([], [], marker=MARKERS.get(s, "D"), ls="", color="k", label=s) for s in splits]
    if continuous:
        fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes[0].tolist(), label=color_by)
        if not finite.all():
            handles.append(Line2D([], [], marker="o", ls="", color=MISSING, label=f"{color_by} missing"))
    else:
        handles += [Line2D([], [], marker="o", ls="", color=colors[lev], label=lev) for lev in levels]
        if any(v is None for v in cats):
            handles.append(Line2D([], [], marker="o", ls="", color=MISSING, label="missing"))
    axes[0][-1].legend(handles=handles, loc="best", fontsize=8, title=None if continuous else (color_by or "split"))
    fig.suptitle(f"{title}{len(meta)} subjects, {method.upper()}, colour: {color_by or 'split'}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, lambda fh: fh.write(buf.getvalue()))
    return path
