"""Write the whole demo cohort (kb/cohort-format.md) into a folder, atomically, and reuse it when it is already there.

    paths = generate_demo_cohort("~/.cache/genobrain/demo", n_subjects=200, seed=0)  # parameters: DemoCohortConfig
    paths["manifest"], paths["vcf"], paths["reference"], paths["regions"], paths["atlas"], paths["atlas_coords"]

Layout: manifest.csv, reference.fa(.fai), regions.bed, genotypes.vcf.gz(.tbi), atlas.nii.gz, atlas_coords.csv,
fmri/<subject>_bold.nii.gz, truth.json (the planted link: causal variants, weights, networks, per-subject factors) and
_COMPLETE.json (the parameters; written last). Everything is written into a temporary sibling folder that is renamed
into place, so a finished cohort is reused only when its parameters match and a half-written one is never seen.
Random streams are split by purpose: the genome and the link depend on (seed, genome parameters) only, subject k's
genotypes and scan on (seed, k), so adding subjects keeps the existing ones.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from fusion.demo import brain, genome
from fusion.demo.config import demo_params
from fusion.demo.link import causal_per_region, make_link

log = logging.getLogger(__name__)
GENERATOR_VERSION = 1
MARKER = "_COMPLETE.json"
FILES = {
    "manifest": "manifest.csv",
    "vcf": "genotypes.vcf.gz",
    "reference": "reference.fa",
    "regions": "regions.bed",
    "atlas": "atlas.nii.gz",
    "atlas_coords": "atlas_coords.csv",
}


def generate_demo_cohort(out_dir: str | Path, *, overwrite: bool = False, **params) -> dict[str, Path]:
    """Generate (or reuse) the demo cohort in out_dir; returns the paths keyed like load_cohort's arguments.

    A folder holding a demo cohort with other parameters is an error unless overwrite=True (then it is replaced);
    a non-empty folder that is not a demo cohort is never touched.
    """
    params = demo_params(**params)
    out = Path(out_dir).expanduser().absolute()
    paths = {key: out / name for key, name in FILES.items()}
    try:
        if _finished(out, params):
            log.info("demo cohort: reusing %s", out)
            return paths
    except FileExistsError:
        if not (overwrite and (out / MARKER).exists()):
            raise
        log.info("demo cohort: replacing %s (overwrite=True)", out)
        trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, trash)
        shutil.rmtree(trash, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        t0 = time.perf_counter()
        _write(tmp, params)
        if out.exists() and not any(out.iterdir()):
            out.rmdir()
        try:
            os.rename(tmp, out)
        except OSError:
            if not _finished(out, params):  # not a concurrent writer of the same cohort: a real clash
                raise
            log.info("demo cohort: another process finished %s first; using it", out)
        else:
            log.info("demo cohort: wrote %s in %.1f s", out, time.perf_counter() - t0)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return paths


def _finished(out: Path, params: dict) -> bool:
    """True for a finished cohort with these parameters; raises for anything else that is in the way."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    marker = out / MARKER
    if not marker.exists():
        raise FileExistsError(
            f"{out} exists but is not a finished demo cohort (no {MARKER}); delete it or pick another"
        )
    done = json.loads(marker.read_text())
    if done.get("params") != params or done.get("generator_version") != GENERATOR_VERSION:
        raise FileExistsError(
            f"{out} holds a demo cohort generated with other parameters (see {marker}); delete it, pick another "
            "folder or pass overwrite=True"
        )
    return True


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _write(tmp: Path, p: dict) -> None:
    seed, n = p["seed"], p["n_subjects"]
    if n < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n}")
    (tmp / "fmri").mkdir(parents=True)
    # genome and link: depend on the seed and genome parameters only
    rng_g = _rng(seed, 0)
    contigs = genome.make_reference(rng_g, p["n_contigs"], p["contig_length"], p["soft_mask_fraction"])
    regions = genome.make_regions(rng_g, contigs, p["n_regions"], p["region_length"], p["region_length_jitter"])
    n_causal = p["n_factors"] * p["causal_per_factor"]
    sites, causal = genome.place_sites(
        rng_g,
        contigs,
        regions,
        variants_per_region=p["variants_per_region"],
        causal_per_region=causal_per_region(rng_g, p["n_regions"], n_causal),
        causal_maf=(p["causal_maf_min"], p["causal_maf_max"]),
        indel_fraction=p["indel_fraction"],
        max_indel_len=p["max_indel_len"],
        multiallelic_fraction=p["multiallelic_fraction"],
    )
    link = make_link(
        _rng(seed, 1),
        np.array([s.freqs[0] for s in causal]),
        n_factors=p["n_factors"],
        causal_per_factor=p["causal_per_factor"],
        n_networks=p["n_networks"],
        effect_size=p["effect_size"],
        base_coupling=p["base_coupling"],
        max_coupling=p["max_coupling"],
    )
    # subjects: genotypes, factors, covariates
    ids = [f"sub-{j + 1:04d}" for j in range(n)]
    alleles = np.concatenate(
        [genome.draw_haplotypes(_rng(seed, 2, j), sites, 1, p["missing_rate"]) for j in range(n)], axis=1
    )  # (V, S, 2)
    row_of = {id(s): v for v, s in enumerate(sites)}
    causal_rows = [row_of[id(s)] for s in causal]
    dosages = (alleles[causal_rows] == 1).sum(-1)  # (n_causal, S)
    factors = link.factors(dosages)  # (S, K)
    rho = link.couplings(factors)  # (S, K)
    genome.write_reference(tmp / FILES["reference"], contigs)
    genome.write_regions(tmp / FILES["regions"], regions)
    genome.write_vcf(tmp / FILES["vcf"], contigs, sites, alleles, ids)
    # brain: atlas, then one scan per subject
    atlas, coords, mask = brain.make_atlas(p["sphere_radius_mm"], p["n_networks"], seed)
    nib.save(atlas, tmp / FILES["atlas"])
    coords.to_csv(tmp / FILES["atlas_coords"], index=False)
    network_of_parcel = coords["network"].str.removeprefix("net").astype(int).to_numpy() - 1
    labels = np.asarray(atlas.dataobj)
    fmri = []
    for j, sid in enumerate(ids):
        rng_b = _rng(seed, 3, j)
        parcels = brain.parcel_series(
            rng_b, network_of_parcel, p["n_networks"], link.pairs, rho[j],
            n_volumes=p["n_volumes"], ar_coef=p["ar_coef"], parcel_noise=p["parcel_noise"],
        )  # fmt: skip
        img = brain.bold_image(
            rng_b, labels, mask, atlas.affine, parcels, tr=p["tr"], ar_coef=p["ar_coef"], baseline=p["baseline"],
            amplitude=p["amplitude"], voxel_noise=p["voxel_noise"], background_signal=p["background_signal"],
        )  # fmt: skip
        fmri.append(f"fmri/{sid}_bold.nii.gz")
        nib.save(img, tmp / fmri[-1])
    _write_manifest(tmp / FILES["manifest"], ids, fmri, p)
    _write_truth(tmp / "truth.json", p, link, causal, coords, ids, factors, rho)
    (tmp / MARKER).write_text(json.dumps({"generator_version": GENERATOR_VERSION, "params": p}, indent=1))


def _write_manifest(path: Path, ids: list[str], fmri: list[str], p: dict) -> None:
    n = len(ids)
    rng = _rng(p["seed"], 4)
    fractions = np.asarray(p["split_fractions"], dtype=float)
    if fractions.shape != (3,) or (fractions < 0).any() or fractions.sum() <= 0:
        raise ValueError(f"split_fractions must be three non-negative numbers (train, val, test), got {fractions}")
    bounds = np.rint(np.cumsum(fractions / fractions.sum()) * n).astype(int)
    split = np.empty(n, dtype=object)
    order = rng.permutation(n)
    for name, lo, hi in zip(("train", "val", "test"), (0, *bounds[:2]), bounds):
        split[order[lo:hi]] = name
    manifest = pd.DataFrame(
        {
            "subject_id": ids,
            "fmri": fmri,
            "age": np.round(rng.uniform(20, 80, n), 1),
            "sex": rng.choice(["F", "M"], n),
            "site": [f"site{k + 1}" for k in rng.integers(0, p["n_sites"], n)],
            "split": split,
        }
    )
    manifest.to_csv(path, index=False)


def _write_truth(path, p, link, causal, coords, ids, factors, rho) -> None:
    networks = sorted(coords["network"].unique(), key=lambda s: int(s[3:]))
    truth = {
        "description": (
            "factor_k = sum_j w_kj (dosage_kj - 2 p_kj) / sqrt(sum_j w_kj^2 2 p_kj (1 - p_kj)); coupling_k = "
            "clip(base_k + effect_size * factor_k, +-max_coupling) = correlation of network pair k's signals"
        ),
        "effect_size": link.effect_size,
        "max_coupling": link.max_coupling,
        "factors": [
            {
                "factor": k,
                "networks": [networks[a] for a in link.pairs[k]],
                "base_coupling": float(link.base[k]),
                "variants": [
                    {
                        "id": causal[v].id,
                        "contig": causal[v].contig,
                        "pos": causal[v].start + 1,  # 1-based, as in the VCF
                        "ref": causal[v].ref,
                        "alt": causal[v].alts[0],
                        "alt_freq": causal[v].freqs[0],
                        "weight": float(link.weights[k, j]),
                    }
                    for j, v in enumerate(link.variants[k])
                ],
            }
            for k in range(len(link.pairs))
        ],
        "subjects": {
            sid: {"factors": np.round(factors[j], 6).tolist(), "couplings": np.round(rho[j], 6).tolist()}
            for j, sid in enumerate(ids)
        },
        "params": p,
    }
    Path(path).write_text(json.dumps(truth, indent=1))
