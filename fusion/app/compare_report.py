"""The comparison's tables and figure from its finished cells (fusion.app.compare): results.csv, summary.md,
summary.png (matplotlib, Agg backend). Every number is a test metric a cell logged (fusion.app.evaluation and the
module's retrieval); this file only aggregates over seeds (mean, sample sd) and lays them out.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from fusion.app.evaluation import EMBEDDINGS
from fusion.app.resilience import write_atomic

PAIR = ["genomics", "brain"]
KEYS = ["genomics", "brain", "seed", "n_test"]  # results.csv's first columns
DIRECTION_NAMES = {"g2b": "genome -> brain", "b2g": "brain -> genome"}
PROBE_SCORE = {"r2": "R^2", "balanced_accuracy": "balanced accuracy", "auc": "AUC"}


def results_table(records: list[dict]) -> pd.DataFrame:
    """One row per cell: genomics, brain, seed, n_test, then every test metric (columns sorted)."""
    rows = [{k: r[k] for k in KEYS} | r["metrics"] for r in records]
    table = pd.DataFrame(rows, columns=KEYS) if not rows else pd.DataFrame(rows)
    metrics = sorted(c for c in table.columns if c not in KEYS)
    return table[KEYS + metrics].sort_values(KEYS[:3], kind="stable").reset_index(drop=True)


def _mean_sd(values: pd.Series) -> tuple[float, float]:
    values = values.dropna()
    if values.empty:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def _fmt(values: pd.Series | None, digits: int = 3) -> str:
    if values is None:
        return "-"
    mean, sd = _mean_sd(values)
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if math.isnan(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def retrieval_section(table: pd.DataFrame, direction: str) -> str:
    header = ["genomics", "brain", "seeds", "n_test", "chance R@1", "R@1", "R@1 95% CI", "R@5", "R@10", "median rank",
              "shuffled R@1", "CCA R@1", "PLS R@1"]  # fmt: skip
    rows = []
    for (genomics, brain), group in table.groupby(PAIR, sort=False):
        lo, hi = group.get(f"test/{direction}/R@1_lo"), group.get(f"test/{direction}/R@1_hi")
        ci = "-" if lo is None or hi is None else f"{lo.mean():.3f}–{hi.mean():.3f}"
        n = group["n_test"]
        cells = [genomics, brain, str(len(group)), f"{int(n.iloc[0])}" if n.nunique() == 1 else _fmt(n, 0)]
        cells += [f"{(1 / n).mean():.3f}", _fmt(group.get(f"test/{direction}/R@1")), ci]
        cells += [_fmt(group.get(f"test/{direction}/{k}")) for k in ("R@5", "R@10")]
        cells.append(_fmt(group.get(f"test/{direction}/median_rank"), 1))
        cells += [_fmt(group.get(f"test/{model}/{direction}/R@1")) for model in ("shuffled", "cca", "pls")]
        rows.append(cells)
    return f"### {DIRECTION_NAMES[direction]}\n\n" + _markdown(header, rows)


def probe_columns(table: pd.DataFrame) -> dict[tuple[str, str], list[str]]:
    """(covariate, score) -> embeddings probed, from columns test/probe/<covariate>/<embedding>/<score>; covariates
    in name order, scores and embeddings in PROBE_SCORE and EMBEDDINGS order."""
    found: dict[tuple[str, str], set[str]] = {}
    for col in table.columns:
        parts = col.split("/")
        if len(parts) == 5 and parts[:2] == ["test", "probe"]:
            found.setdefault((parts[2], parts[4]), set()).add(parts[3])
    order = {name: i for i, name in enumerate([*PROBE_SCORE, *EMBEDDINGS])}
    keys = sorted(found, key=lambda k: (k[0], order.get(k[1], len(order)), k[1]))
    return {k: sorted(found[k], key=lambda e: (order.get(e, len(order)), e)) for k in keys}


def probe_section(table: pd.DataFrame) -> str:
    probes = probe_columns(table)
    if not probes:
        return "No probe was scored (no covariate with enough subjects, or probes turned off)."
    parts = []
    for (covariate, score), embeddings in probes.items():
        header = ["genomics x brain", *embeddings]
        rows = [
            [f"{g} x {b}", *(_fmt(group.get(f"test/probe/{covariate}/{e}/{score}")) for e in embeddings)]
            for (g, b), group in table.groupby(PAIR, sort=False)
        ]
        parts.append(f"### {covariate}: {PROBE_SCORE.get(score, score)}\n\n" + _markdown(header, rows))
    return "\n\n".join(parts)


def summary_markdown(table: pd.DataFrame, records: list[dict]) -> str:
    seeds = sorted({int(s) for s in table["seed"]}) if len(table) else []
    wall = sum(float(r.get("wall_s", 0.0)) for r in records)
    intro = [
        "# Encoder comparison",
        "",
        f"{len(table)} finished cells ({table.groupby(PAIR).ngroups if len(table) else 0} pairs x seeds {seeds}); "
        f"training and testing took {wall / 60:.1f} min summed over cells.",
        "Test split; mean ± sd over seeds. 95% CI: the percentile bootstrap over test subjects, averaged over seeds. "
        "Chance R@1 = 1/n_test; shuffled = the same model on permuted test pairs (measured chance); CCA / PLS = the "
        "linear baselines fit on the training subjects' encoder features (kb/evaluation.md).",
        "",
        "## Retrieval",
    ]
    body = [retrieval_section(table, d) for d in DIRECTION_NAMES] if len(table) else ["No finished cell."]
    return "\n".join(intro) + "\n\n" + "\n\n".join(body) + "\n\n## Linear probes\n\n" + probe_section(table) + "\n"


def summary_figure(table: pd.DataFrame, path: Path) -> None:
    """R@1 per pair and direction (bars: mean, error bars: sd over seeds; markers: shuffled, CCA, PLS, chance) and one
    panel per probed covariate (bars per embedding)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(table.groupby(PAIR, sort=False))
    probes = probe_columns(table)
    panels = [("retrieval", None)] + [("probe", key) for key in probes if key[1] != "auc"]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, 1.6 * len(pairs) + 3), 3.6 * len(panels)), squeeze=False)
    x = np.arange(len(pairs))
    labels = [f"{g}\n{b}" for (g, b), _ in pairs]
    for ax, (kind, key) in zip(axes[:, 0], panels):
        if kind == "retrieval":
            width = 0.38
            for j, direction in enumerate(DIRECTION_NAMES):
                stats = [_mean_sd(grp.get(f"test/{direction}/R@1", pd.Series(dtype=float))) for _, grp in pairs]
                pos = x + (j - 0.5) * width
                ax.bar(pos, [m for m, _ in stats], width, yerr=[0 if math.isnan(s) else s for _, s in stats],
                       capsize=3, label=f"R@1 {DIRECTION_NAMES[direction]}")  # fmt: skip
                for name, marker in (("shuffled", "x"), ("cca", "^"), ("pls", "s")):
                    vals = [
                        _mean_sd(grp.get(f"test/{name}/{direction}/R@1", pd.Series(dtype=float)))[0] for _, grp in pairs
                    ]
                    ax.scatter(pos, vals, marker=marker, color="k", zorder=3, label=name if j == 0 else None)
            chance = [float((1 / grp["n_test"]).mean()) for _, grp in pairs]
            ax.hlines(chance, x - 0.45, x + 0.45, colors="grey", linestyles="dashed", label="chance 1/n")
            ax.set_ylabel("test R@1")
            ax.set_title("retrieval (mean ± sd over seeds)")
        else:
            covariate, score = key
            embeddings = probes[key]
            width = 0.8 / len(embeddings)
            for j, emb in enumerate(embeddings):
                stats = [
                    _mean_sd(grp.get(f"test/probe/{covariate}/{emb}/{score}", pd.Series(dtype=float)))
                    for _, grp in pairs
                ]
                ax.bar(x + (j - (len(embeddings) - 1) / 2) * width, [m for m, _ in stats], width,
                       yerr=[0 if math.isnan(s) else s for _, s in stats], capsize=2, label=emb)  # fmt: skip
            ax.set_ylabel(PROBE_SCORE.get(score, score))
            ax.set_title(f"linear probe: {covariate}")
        ax.set_xticks(x, labels)
        ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, lambda fh: fh.write(buffer.getvalue()))


def write_reports(records: list[dict], out: Path) -> pd.DataFrame:
    """results.csv, summary.md and summary.png in `out` from the cells' records (atomic writes) -> the results table."""
    table = results_table(records)
    write_atomic(out / "results.csv", lambda fh: fh.write(table.to_csv(index=False).encode()))
    write_atomic(out / "summary.md", lambda fh: fh.write(summary_markdown(table, records).encode()))
    if len(table):
        summary_figure(table, out / "summary.png")
    return table
