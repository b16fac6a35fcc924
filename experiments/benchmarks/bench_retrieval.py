"""Retrieval statistics past 100k subjects (fusion.evaluation.retrieval): time and peak memory of the ranks both
ways, the bootstrap interval and the shuffled-pairing baseline on N paired embeddings.

    python experiments/benchmarks/bench_retrieval.py [--subjects 120000] [--dim 512] [--resamples 200]

The ranks are exact: every query is scored against all N gallery items in query chunks of at most
fusion.metrics.MAX_ELEMENTS scores, so memory stays O(chunk x N) while time is O(N^2 D). As a yardstick measured in
the same run, the time of the same number of multiply-adds as one direction's similarity matmul ((N, D) @ (D, N), in
the same chunks) is reported beside it: the ratio says what the comparisons and counts add. The correctness of the
chunking is tested at small N (tests/test_evaluation_retrieval.py, tests/test_metrics.py); this script is the
scale check. Results: experiments/benchmarks/results/retrieval.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "experiments" / "benchmarks" / "results"


def paired(n: int, d: int, signal: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit embeddings whose pairs share a component of relative strength `signal`: (N, D) each."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, d, generator=g)
    zg = torch.nn.functional.normalize(signal * shared + torch.randn(n, d, generator=g), dim=-1)
    zb = torch.nn.functional.normalize(signal * shared + torch.randn(n, d, generator=g), dim=-1)
    return zg, zb


def matmul_seconds(zg: torch.Tensor, zb: torch.Tensor, chunk: int) -> float:
    start = time.perf_counter()
    for i in range(0, zg.shape[0], chunk):
        zg[i : i + chunk] @ zb.T  # (C, N)
    return time.perf_counter() - start


def main() -> None:
    from fusion.evaluation.retrieval import retrieval_statistics
    from fusion.metrics import MAX_ELEMENTS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subjects", type=int, default=120_000)
    ap.add_argument("--dim", type=int, default=512)  # model.embed_dim
    ap.add_argument("--resamples", type=int, default=200)  # bootstrap resamples
    ap.add_argument("--permutations", type=int, default=1)  # shuffled-pairing baseline
    args = ap.parse_args()
    n, d = args.subjects, args.dim
    zg, zb = paired(n, d, signal=0.5)
    chunk = max(1, min(1024, MAX_ELEMENTS // n))
    load = os.getloadavg()
    start = time.perf_counter()
    stats = retrieval_statistics(zg, zb, n_resamples=args.resamples, n_permutations=args.permutations)
    wall = time.perf_counter() - start
    reference = matmul_seconds(zg, zb, chunk)
    passes = 2 * (1 + args.permutations)  # both directions, true pairing and each permutation
    result = {
        "meta": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                 "torch": torch.__version__, "load_start": load, "load_end": os.getloadavg()},  # fmt: skip
        "subjects": n, "dim": d, "query_chunk": chunk, "resamples": args.resamples,
        "permutations": args.permutations, "wall_s": round(wall, 1),
        "matmul_one_direction_s": round(reference, 1), "ratio_to_matmul_passes": round(wall / (passes * reference), 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "g2b_R@1": stats["g2b/R@1"], "g2b_R@1_interval": [stats["g2b/R@1_lo"], stats["g2b/R@1_hi"]],
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "retrieval.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# Retrieval statistics at scale",
        "",
        f"`python experiments/benchmarks/bench_retrieval.py --subjects {n} --dim {d} --resamples {args.resamples}`; "
        f"{result['meta']['cpu']}, torch {torch.__version__} with {torch.get_num_threads()} threads, load average "
        f"{load[0]:.1f} at start.",
        "",
        f"- {n:,} pairs of {d}-D embeddings, query chunks of {chunk} rows: ranks both ways, a {args.resamples}-"
        f"resample bootstrap and {args.permutations} shuffled pairing(s) in **{wall:.0f} s**, peak RSS "
        f"{result['peak_rss_gib']} GiB (the embeddings alone: {2 * n * d * 4 / 2**30:.2f} GiB).",
        f"- The same chunked similarity matmul, one direction: {reference:.0f} s; the statistics take "
        f"{result['ratio_to_matmul_passes']}x the time of their {passes} matmul passes.",
        f"- g2b R@1 {stats['g2b/R@1']:.4f} (95% interval {stats['g2b/R@1_lo']:.4f}-{stats['g2b/R@1_hi']:.4f}).",
    ]
    (RESULTS / "retrieval.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
