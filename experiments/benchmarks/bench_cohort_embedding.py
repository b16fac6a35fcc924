"""Benchmark: embedding a cohort's personal haplotypes with a frozen Caduceus costs O(unique haplotypes) (issue 9).

    python experiments/benchmarks/bench_cohort_embedding.py            # the full run (see the results file for time)
    python experiments/benchmarks/bench_cohort_embedding.py --quick    # sanity run: small cohorts, 1-2 kb regions

Cohorts (real files: reference FASTA + .fai, regions BED, phased multi-sample VCF.gz + .tbi, written with the demo
generator's helpers fusion.demo.genome.make_reference / place_sites / write_*): regions of 1, 2, 4, 8 and 16 kb, one
per contig. Per region, `n_founders` founder haplotypes (a few dozen) carry alleles at the common sites, drawn from
each site's frequency (place_sites' many-rare-some-common spectrum, SNVs, indels, multi-allelic sites); every subject
haplotype is a mosaic of founders along the region (a Li & Stephens-style copying path: it switches founder between
consecutive sites with probability 1 - exp(-rho * distance), rho = `switch_per_bp`), plus rare variants (sites at
`rare_per_bp` density, each carried by a haplotype independently with frequency `rare_freq`, i.e. mostly private).
Cohorts of 100 and 1,000 subjects are draws of the same population (same founders and sites); sites no subject
carries are dropped from that cohort's VCF, as in a real call set.

Models (frozen, random weights, fp32, `--threads` torch threads, CPU kernel):
  tiny        d_model 32, 2 layers, PS (the architecture of genomics=caduceus_tiny, configs/model/caduceus_mlm.yaml)
  published   the 131k Caduceus-PS config (d_model 256, 16 layers), written as a local checkpoint in the published
              layout (config.json + model.safetensors, genomics.caduceus.loading) and loaded from it; run on 100
              subjects and the two smallest regions, and extrapolated from its measured backbone tokens/s
Each region is read by genomics.transforms.PersonalSequenceTokens (haplotypes exactly as bcftools consensus) and
embedded by genomics.models.CaduceusGenomicsEncoder with the default pooling of genomics=caduceus_tiny and a
disk cache (genomics.embedding_cache), in batches of 32 subjects as in training:
  cold    a fresh cache folder: every unique haplotype (and, for pool=diff, the reference) goes through the backbone
  warm    a new encoder (empty memory memo) on the same folder: all cache hits, no backbone pass (counted)
  naive   every subject's two haplotypes through the backbone, no dedup and no cache: 2N sequences per region, timed
          from the cold run's backbone tokens/s (running it would take hours at 1,000 subjects)
Before the cold run, the encoder's embedder makes one warm-up pass on 2 random sequences of the region's length (the
one-time costs of a process are not the cohort's).
Unique haplotypes = distinct token rows (ids, and site offsets for site pooling) per region. Machine load: the
1-minute load average before and after each case (the cores are shared).
Writes results/cohort_embedding[_quick].{md,json}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fusion.demo.genome import make_reference, place_sites, write_reference, write_regions, write_vcf  # noqa: E402
from genomics.caduceus.config import CaduceusConfig  # noqa: E402
from genomics.caduceus.modeling import Caduceus  # noqa: E402
from genomics.models import CaduceusGenomicsEncoder  # noqa: E402
from genomics.regions import Region  # noqa: E402
from genomics.transforms import PersonalSequenceTokens  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PUBLISHED = "caduceus-ps_seqlen-131k_d_model-256_n_layer-16"
BATCH = 32  # subjects per encoder call (the training batch)


def population(rng: np.random.Generator, lengths: list[int], n_founders: int, common_per_bp: float, rare_per_bp: float):
    """Reference contigs (one per region, region centred), regions, sites per region and each site's kind."""
    contigs = make_reference(rng, len(lengths), max(lengths) + 2_000, soft_mask_fraction=0.1)
    regions = []
    for name, length in zip(contigs, lengths):
        start = (len(contigs[name]) - length) // 2
        regions.append(Region(name, start, start + length, f"r{length // 1000}kb"))
    n_common = [max(4, round(length * common_per_bp)) for length in lengths]
    n_rare = [round(length * rare_per_bp) for length in lengths]
    sites = []
    for ri, (c, r) in enumerate(zip(n_common, n_rare)):  # place_sites per region: its own site count
        s, _ = place_sites(
            rng, contigs, [regions[ri]], variants_per_region=c + r, causal_per_region=[0], causal_maf=(0.0, 0.0),
            indel_fraction=0.1, max_indel_len=4, multiallelic_fraction=0.03,
        )  # fmt: skip
        for site in s:
            site.region = ri
        rare = set(rng.choice(len(s), size=r, replace=False).tolist())
        sites += [(site, k in rare) for k, site in enumerate(s)]
    order = {name: i for i, name in enumerate(contigs)}
    sites.sort(key=lambda t: (order[t[0].contig], t[0].start))
    # founders: (V, F) allele indices at the common sites, drawn from each site's ALT frequencies
    founders = np.zeros((len(sites), n_founders), dtype=np.int8)
    for v, (site, rare) in enumerate(sites):
        if not rare:
            p = np.array([1.0 - sum(site.freqs), *site.freqs])
            founders[v] = rng.choice(len(p), size=n_founders, p=p / p.sum())
    return contigs, regions, sites, founders


def draw_cohort(rng, regions, sites, founders, n_subjects: int, switch_per_bp: float, rare_freq: float) -> np.ndarray:
    """(V, N, 2) allele indices: founder mosaics along each region plus independent rare variants."""
    alleles = np.zeros((len(sites), n_subjects, 2), dtype=np.int8)
    n_founders = founders.shape[1]
    for ri in range(len(regions)):
        rows = [v for v, (s, _) in enumerate(sites) if s.region == ri]
        pos = np.array([sites[v][0].start for v in rows])
        path = rng.integers(0, n_founders, size=(n_subjects, 2))  # founder copied at the region's first site
        for j, v in enumerate(rows):
            if j:
                switch = rng.random((n_subjects, 2)) < 1.0 - math.exp(-switch_per_bp * (pos[j] - pos[j - 1]))
                path = np.where(switch, rng.integers(0, n_founders, size=(n_subjects, 2)), path)
            if sites[v][1]:  # rare: not on the founders, carried independently
                alleles[v] = (rng.random((n_subjects, 2)) < rare_freq).astype(np.int8)
            else:
                alleles[v] = founders[v][path]
    return alleles


def write_cohort(folder: Path, contigs, regions, sites, alleles) -> dict:
    """FASTA + BED + VCF.gz of one cohort (sites no subject carries are dropped); paths and counts."""
    folder.mkdir(parents=True, exist_ok=True)
    keep = [v for v in range(len(sites)) if (alleles[v] > 0).any()]
    kept = [sites[v][0] for v in keep]
    for i, s in enumerate(kept):
        s.id = f"bv{i + 1:05d}"
    samples = [f"sub-{k + 1:04d}" for k in range(alleles.shape[1])]
    paths = {"reference": folder / "ref.fa", "regions": folder / "regions.bed", "vcf": folder / "cohort.vcf.gz"}
    write_reference(paths["reference"], contigs)
    write_regions(paths["regions"], regions)
    write_vcf(paths["vcf"], contigs, kept, alleles[keep], samples)
    per_region = [sum(1 for s in kept if s.region == ri) for ri in range(len(regions))]
    return {"paths": paths, "samples": samples, "sites": per_region, "regions": regions}


def pooling() -> dict:
    """The default pooling of genomics=caduceus_tiny (configs/genomics/pooling/<its default>.yaml), as composed."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        enc = compose("genomics/caduceus_tiny").genomics.encoder
    pool = str(enc.pool)
    return {"sites": pool != "mean", "pool": pool, "window": int(enc.get("window", 0)),
            "site_pool": str(enc.get("site_pool", "concat"))}  # fmt: skip


def tiny_config() -> CaduceusConfig:
    """The architecture of genomics=caduceus_tiny's first-use pretraining (configs/model/caduceus_mlm.yaml)."""
    return CaduceusConfig(**OmegaConf.to_container(OmegaConf.load(ROOT / "configs/model/caduceus_mlm.yaml").config))


def random_checkpoint(folder: Path, config: CaduceusConfig) -> Path:
    """A Caduceus of `config` with random weights (seed 0), saved in the published local layout (config.json +
    model.safetensors), so every encoder of a case loads the same weights (and the same cache folder)."""
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        Caduceus(config).save_pretrained(folder)
    return folder


class BackboneMeter:
    """Counts the sequences and tokens that reach the embedder (the backbone) and the time spent there."""

    def __init__(self, module: torch.nn.Module):
        self.rows = self.tokens = 0
        self.seconds = 0.0
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def _pre(self, module, args):
        self._t = time.perf_counter()
        self.rows += int(args[0].shape[0])
        self.tokens += int(args[0].numel())

    def _post(self, module, args, out):
        self.seconds += time.perf_counter() - self._t


def region_inputs(cohort: dict, region: Region, sites: bool) -> tuple[PersonalSequenceTokens, list, float]:
    """One region's transform and every subject's input (tokenised personal haplotypes), and the time it took."""
    p = cohort["paths"]
    t0 = time.perf_counter()
    tokens = PersonalSequenceTokens(p["reference"], p["vcf"], [region], sites=sites)
    items = [tokens(s) for s in cohort["samples"]]
    return tokens, items, time.perf_counter() - t0


def unique_rows(items: list, sites: bool) -> int:
    rows = [torch.cat([x["ids"], x["sites"]], -1) if sites else x for x in items]  # (1, 2, L[+S]) each
    return int(torch.unique(torch.cat([r[0] for r in rows]), dim=0).shape[0])


def encoder(model: dict, pool: dict, tokens: PersonalSequenceTokens, cache_dir: Path) -> CaduceusGenomicsEncoder:
    extra = tokens.encoder_inputs() if pool["sites"] else {}
    return CaduceusGenomicsEncoder(
        1, pool=pool["pool"], window=pool["window"], site_pool=pool["site_pool"], cache_dir=str(cache_dir),
        checkpoint=str(model["checkpoint"]), chunk_size=model["chunk_size"], **extra,
    )  # fmt: skip


def embed_all(enc: CaduceusGenomicsEncoder, items: list) -> tuple[float, BackboneMeter]:
    meter = BackboneMeter(enc.embedder)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for k in range(0, len(items), BATCH):
            batch = torch.utils.data.default_collate(items[k : k + BATCH])
            enc(batch)
    return time.perf_counter() - t0, meter


def run_case(model: dict, cohort: dict, index: int, pool: dict, work: Path, budget: float, rate: float | None) -> dict:
    """One (model, cohort, region): tokenise, count unique rows, embed cold then warm. A case whose unique tokens
    exceed `budget` is not embedded: its cold time is estimated at `rate` (the model's measured backbone tokens/s)."""
    region = cohort["regions"][index]
    load0 = os.getloadavg()[0]
    tokens, items, t_tok = region_inputs(cohort, region, pool["sites"])
    n = len(items)
    length = tokens.length
    unique = unique_rows(items, pool["sites"])
    row = {
        "model": model["name"], "subjects": n, "region": region.name, "bp": len(region), "L": length,
        "vcf_sites": cohort["sites"][index], "haplotypes": 2 * n, "unique": unique, "tokenise_s": round(t_tok, 2),
    }  # fmt: skip
    todo = unique + (pool["pool"] == "diff")  # and the reference, for pool=diff
    if todo * length > budget and rate:
        row |= {"measured": False, "cold_backbone_rows": todo, "tokens_per_s": round(rate, 1),
                "cold_s": round(todo * length / rate, 1), "backbone_s": None, "warm_s": None,
                "warm_backbone_rows": None}  # fmt: skip
    else:
        cache = Path(tempfile.mkdtemp(dir=work, prefix="cache-"))
        enc = encoder(model, pool, tokens, cache)
        with torch.inference_mode():  # one-time costs of a process (kernel dispatch, allocator) are not the cohort's
            enc.embedder(torch.randint(7, 11, (2, length)))
        cold_s, cold = embed_all(enc, items)
        warm_s, warm = embed_all(encoder(model, pool, tokens, cache), items)
        row |= {"measured": True, "cold_backbone_rows": cold.rows, "backbone_s": round(cold.seconds, 2),
                "tokens_per_s": round(cold.tokens / cold.seconds, 1), "cold_s": round(cold_s, 2),
                "warm_s": round(warm_s, 3), "warm_backbone_rows": warm.rows}  # fmt: skip
    naive_s = 2 * n * length / row["tokens_per_s"]
    row |= {
        "naive_s": round(naive_s, 1), "naive_over_cold": round(naive_s / row["cold_s"], 2),
        "naive_over_warm": round(naive_s / row["warm_s"], 1) if row["warm_s"] else None,
        "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2),
    }  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def extrapolate(tiny_rows: list, published_rows: list) -> list:
    """Published-size cost of every (cohort, region) of the tiny runs: its unique and naive tokens at the published
    model's measured backbone tokens/s (the mean over its measured regions; token throughput barely depends on the
    sequence length at these lengths, the scan being linear)."""
    if not published_rows:
        return []
    rate = float(np.mean([r["tokens_per_s"] for r in published_rows]))
    out = []
    for r in tiny_rows:
        cold_rows = r["cold_backbone_rows"]
        out.append({
            "subjects": r["subjects"], "region": r["region"], "L": r["L"], "unique": r["unique"],
            "cold_s_est": round(cold_rows * r["L"] / rate, 1),
            "naive_s_est": round(2 * r["subjects"] * r["L"] / rate, 1),
            "naive_over_cold": round(2 * r["subjects"] / cold_rows, 2), "tokens_per_s": round(rate, 1),
        })  # fmt: skip
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _na(x) -> str:
    return "n/a" if x is None else str(x)


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"# Cohort embedding benchmark{' (quick)' if res['quick'] else ''}"
        + ("" if res["complete"] else " (PARTIAL: the run is still going or was stopped)"),
        "",
        f"{res['date']}; {m['cpu']}, {m['cpus']} logical CPUs, torch {m['torch']} with {m['threads']} threads, nice "
        f"{m['nice']}; load "
        f"(1-min average) {m['load_start']} at start, {m['load_end']} at end (cores shared with other jobs).",
        f"Population: {res['population']}. Pooling (configs/genomics/caduceus_tiny.yaml): {res['pooling']}.",
        f"Total wall time {res['wall_s']:.0f} s. Command: `{res['command']}`.",
        "",
        f"Cases above {res['budget_tokens']:.0f} unique tokens are not embedded: cold (est.) = their unique tokens at "
        "the model's measured tokens/s (of its largest measured case); warm n/a.",
        "",
        "| model | subjects | region | L | VCF sites | haplotypes | unique | tokenise s | cold s | backbone rows | "
        "tokens/s | warm s | warm backbone rows | naive s (est.) | naive / cold | naive / warm | load |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["rows"]:
        est = "" if r["measured"] else " (est.)"
        lines.append(
            f"| {r['model']} | {r['subjects']} | {r['region']} | {r['L']} | {r['vcf_sites']} | {r['haplotypes']} | "
            f"{r['unique']} | {r['tokenise_s']} | {r['cold_s']}{est} | {r['cold_backbone_rows']} | "
            f"{r['tokens_per_s']:.0f} | {_na(r['warm_s'])} | {_na(r['warm_backbone_rows'])} | {r['naive_s']:.0f} | "
            f"{r['naive_over_cold']} | {_na(r['naive_over_warm'])} | {r['load_before']}-{r['load_after']} |"
        )
    lines += [
        "",
        "Published-size model (131k PS config, random weights) extrapolated to every cohort and region from its "
        "measured backbone tokens/s (cold = the unique sequences the tiny run embedded, naive = 2N haplotypes):",
        "",
        "| subjects | region | L | unique | tokens/s | cold s (est.) | naive s (est.) | naive / cold |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["published_extrapolated"]:
        lines.append(
            f"| {r['subjects']} | {r['region']} | {r['L']} | {r['unique']} | {r['tokens_per_s']:.0f} | "
            f"{r['cold_s_est']} | {r['naive_s_est']} | {r['naive_over_cold']} |"
        )
    tot = res["totals"]
    lines += ["", "Totals over the regions (tiny measured; published estimated):", ""]
    lines += [f"- {k}: {v}" for k, v in tot.items()]
    return "\n".join(lines) + "\n"


def totals(rows: list, est: list) -> dict:
    out = {}
    for n in sorted({r["subjects"] for r in rows if r["model"] == "tiny"}):
        t = [r for r in rows if r["model"] == "tiny" and r["subjects"] == n]
        e = [r for r in est if r["subjects"] == n]
        out[f"tiny, {n} subjects"] = (
            f"{sum(r['unique'] for r in t)} unique of {sum(r['haplotypes'] for r in t)} haplotypes; cold "
            f"{sum(r['cold_s'] for r in t):.1f} s (est. for {sum(not r['measured'] for r in t)} regions), warm "
            f"{sum(r['warm_s'] or 0 for r in t):.2f} s (measured regions), naive (est.) "
            f"{sum(r['naive_s'] for r in t):.0f} s"
        )
        cold_h, naive_h = (sum(r[k] for r in e) / 3600 for k in ("cold_s_est", "naive_s_est"))
        out[f"published (est.), {n} subjects"] = f"cold {cold_h:.2f} h, naive {naive_h:.2f} h"
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small cohorts and regions (a sanity run)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-founders", type=int, default=32, help="founder haplotypes per region")
    ap.add_argument("--switch-per-bp", type=float, default=2e-5, help="founder switch rate of the copying path")
    ap.add_argument("--rare-per-bp", type=float, default=0.01, help="rare-variant sites per bp")
    ap.add_argument("--rare-freq", type=float, default=0.001, help="carrier frequency per haplotype of a rare site")
    ap.add_argument("--budget-tokens", type=float, default=2e6,
                    help="a case with more unique tokens is not embedded: its cold time is estimated")  # fmt: skip
    ap.add_argument("--work", default=None, help="folder for the cohorts and caches (default: a temp folder)")
    ap.add_argument("--out", default=None, help="results stem (default results/cohort_embedding[_quick])")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    lengths = [1000, 2000] if args.quick else [1000, 2000, 4000, 8000, 16000]
    cohorts = [30, 60] if args.quick else [100, 1000]
    pub_subjects, pub_regions = (10, 1) if args.quick else (100, 2)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-cohort-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start, load_start = time.perf_counter(), os.getloadavg()[0]
    rng = np.random.default_rng(args.seed)
    contigs, regions, sites, founders = population(rng, lengths, args.n_founders, 1 / 200, args.rare_per_bp)
    pool = pooling()
    tiny = {"name": "tiny", "checkpoint": random_checkpoint(work / "tiny", tiny_config()), "chunk_size": 64}
    published_ckpt = random_checkpoint(work / PUBLISHED, CaduceusConfig.published(PUBLISHED))
    published = {"name": "published", "checkpoint": published_ckpt, "chunk_size": 8}
    stem = Path(args.out) if args.out else RESULTS / ("cohort_embedding_quick" if args.quick else "cohort_embedding")
    meta = {
        "quick": args.quick,
        "command": " ".join(["python experiments/benchmarks/bench_cohort_embedding.py", *(argv or sys.argv[1:])]),
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "nice": os.nice(0),
            "load_start": round(load_start, 2),
        },  # fmt: skip
        "population": (
            f"{len(regions)} regions of {', '.join(f'{x // 1000} kb' for x in lengths)}; {args.n_founders} founder "
            f"haplotypes per region, common sites 1 per 200 bp, founder switch rate {args.switch_per_bp}/bp, rare "
            f"sites {args.rare_per_bp}/bp at carrier frequency {args.rare_freq}; seed {args.seed}"
        ),
        "pooling": pool,
        "budget_tokens": args.budget_tokens,
    }
    rows = []
    for n in cohorts:
        alleles = draw_cohort(rng, regions, sites, founders, n, args.switch_per_bp, args.rare_freq)
        t0 = time.perf_counter()
        cohort = write_cohort(work / f"cohort{n}", contigs, regions, sites, alleles)
        print(f"cohort of {n}: files in {time.perf_counter() - t0:.1f} s, sites/region {cohort['sites']}", flush=True)
        cases = [(tiny, cohort, i) for i in range(len(regions))]
        if n == cohorts[0]:
            sub = {**cohort, "samples": cohort["samples"][:pub_subjects]}
            cases += [(published, sub, i) for i in range(pub_regions)]
        for model, c, i in cases:
            measured = [r for r in rows if r["model"] == model["name"] and r["measured"]]
            rate = max(measured, key=lambda r: r["L"] * r["cold_backbone_rows"])["tokens_per_s"] if measured else None
            rows.append(run_case(model, c, i, pool, work, args.budget_tokens, rate))
            write_results(stem, meta, rows, time.perf_counter() - t_start, complete=False)  # a partial table
    print(write_results(stem, meta, rows, time.perf_counter() - t_start, complete=True))


def write_results(stem: Path, meta: dict, rows: list, wall_s: float, complete: bool) -> str:
    """results .json + .md (atomically: temp + rename); `complete` false while cases remain. Returns the markdown."""
    est = extrapolate([r for r in rows if r["model"] == "tiny"], [r for r in rows if r["model"] == "published"])
    res = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **meta,
        "complete": complete,
        "rows": rows,
        "published_extrapolated": est,
        "totals": totals(rows, est),
        "wall_s": wall_s,
    }
    res["machine"] = {**meta["machine"], "load_end": round(os.getloadavg()[0], 2)}
    stem.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(res)
    for suffix, body in ((".json", json.dumps(res, indent=2, default=str) + "\n"), (".md", text)):
        tmp = stem.with_name(f".{stem.name}{suffix}.tmp")
        tmp.write_text(body)
        os.replace(tmp, stem.with_name(stem.name + suffix))
    return text


if __name__ == "__main__":
    main()
