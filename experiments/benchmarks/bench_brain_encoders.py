"""CPU seconds per subject for the fMRI encoders (BrainLM MAE, BrainLM ViT-MAE, SwiFT, BrainMT), tiny and published.

    python experiments/benchmarks/bench_brain_encoders.py [--only swift,brainmt] [--skip-published] [--frames-tiny 150]

A subject = one evaluation pass as in the demo: the transform from the NIfTI (the configs' n_eval_windows windows) and
the encoder forward over those windows (batch of one subject, no gradients, random weights). Scans are synthetic:
the nilearn MNI152 brain mask (bundled, no download) filled with AR(1) signals, int16, uncompressed NIfTI
- tiny: the demo's 4 mm grid, 150 frames, Power-2011 264 sphere atlas (nilearn's bundled coordinates);
- published: FSL's MNI 2 mm grid (91 x 109 x 91), 220 frames (UK Biobank-like but shorter), an A424-sized atlas
  (424 Voronoi parcels of the brain mask) for BrainLM.
Published BrainMT (1 + 252 x 200 = 50,401 tokens) does not finish on this CPU in reasonable time, so its encoder time is
extrapolated from parts timed at few frames: the conv stem per frame (linear in T), the 12 Mamba layers per token
(linear in tokens) and one attention block (shared norm + MLP) fitted as a*L + b*L^2 at three token counts, times 8.
Timing: time.process_time (CPU seconds of this process, all threads) and wall seconds; the machine is shared, so
numbers are indicative. Results: experiments/benchmarks/results/brain_encoders.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
CONFIGS = ROOT / "configs" / "brain"
RESULTS = ROOT / "experiments" / "benchmarks" / "results"
FSL_MNI2 = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
ENCODERS = ["brainlm_mae", "brainlm_vitmae", "swift", "brainmt"]
CONFIG_NAMES = {
    ("brainlm_mae", "tiny"): "brainlm_mae_tiny",
    ("brainlm_mae", "published"): "brainlm_mae",
    ("brainlm_vitmae", "tiny"): "brainlm_vitmae_tiny",
    ("brainlm_vitmae", "published"): "brainlm_vitmae_111m",
    ("swift", "tiny"): "swift_tiny",
    ("swift", "published"): "swift",
    ("brainmt", "tiny"): "brainmt_tiny",
    ("brainmt", "published"): "brainmt",
}


def mni_mask(grid: str) -> nib.Nifti1Image:
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_img

    if grid == "tiny":
        return load_mni152_brain_mask(resolution=4)
    mask = load_mni152_brain_mask(resolution=2)
    return resample_img(mask, FSL_MNI2, (91, 109, 91), interpolation="nearest", force_resample=True, copy_header=True)


def make_scan(path: Path, mask_img: nib.Nifti1Image, n_frames: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    mask = np.asarray(mask_img.dataobj) > 0
    n = int(mask.sum())
    e = rng.normal(size=(n_frames, n)).astype(np.float32)
    for t in range(1, n_frames):  # AR(1) per voxel
        e[t] = 0.6 * e[t - 1] + 0.8 * e[t]
    data = np.zeros(mask.shape + (n_frames,), dtype=np.int16)
    data[mask] = (1000 + 20 * e.T).astype(np.int16)
    img = nib.Nifti1Image(data, mask_img.affine)
    img.header.set_zooms(tuple(np.abs(np.diag(mask_img.affine)[:3])) + (2.0,))
    nib.save(img, str(path))
    return str(path)


def make_atlas(folder: Path, mask_img: nib.Nifti1Image, grid: str) -> tuple[str, str]:
    """Power-2011 spheres (radius 5 mm) for tiny; 424 Voronoi parcels of the mask for published."""
    mask = np.asarray(mask_img.dataobj) > 0
    ijk = np.argwhere(mask)
    xyz = nib.affines.apply_affine(mask_img.affine, ijk)
    labels = np.zeros(mask.shape, dtype=np.int16)
    if grid == "tiny":
        from nilearn.datasets import fetch_coords_power_2011

        centres = fetch_coords_power_2011().rois[["x", "y", "z"]].to_numpy(float)
        d = np.linalg.norm(xyz[:, None] - centres[None], axis=-1)  # (V, 264)
        near = d.argmin(1)
        keep = d[np.arange(len(near)), near] <= 6.0
        labels[tuple(ijk[keep].T)] = near[keep] + 1
    else:
        rng = np.random.default_rng(0)
        centres = xyz[rng.choice(len(xyz), 424, replace=False)]
        near = np.concatenate(
            [np.linalg.norm(c[:, None] - centres[None], axis=-1).argmin(1) for c in np.array_split(xyz, 50)]
        )
        labels[tuple(ijk.T)] = near + 1
    present = np.unique(labels[labels > 0])
    relabel = np.zeros(labels.max() + 1, dtype=np.int16)
    relabel[present] = np.arange(1, len(present) + 1)
    labels = relabel[labels]
    rows = ["label,x,y,z"]
    for lab in range(1, len(present) + 1):
        c = nib.affines.apply_affine(mask_img.affine, np.argwhere(labels == lab)).mean(0)
        rows.append(f"{lab},{c[0]:.1f},{c[1]:.1f},{c[2]:.1f}")
    atlas, coords = folder / f"atlas_{grid}.nii", folder / f"atlas_{grid}.csv"
    nib.save(nib.Nifti1Image(labels, mask_img.affine), str(atlas))
    coords.write_text("\n".join(rows) + "\n")
    return str(atlas), str(coords)


def clock(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def brainmt_extrapolated(encoder, frames: int) -> dict:
    """Encoder seconds at `frames` frames from parts timed at few frames (see module docstring)."""
    net = encoder.backbone.eval()
    n = int(np.prod(net.grid))
    with torch.no_grad():
        x = torch.randn(2, 1, *net.img_size)
        _, stem_cpu, stem_wall = clock(lambda: net.stem(x))
        per_frame = (stem_cpu / 2, stem_wall / 2)
        small = 1 + n * 8
        h = torch.randn(1, small, net.embed_dim)

        def mamba():
            r, y = None, h
            for layer in net.layers:
                y, r = layer(y, r)
            return y

        _, m_cpu, m_wall = clock(mamba)
        per_token = (m_cpu / small, m_wall / small)
        lengths, cpus, walls = [], [], []
        for t in (8, 16, 32):
            length = 1 + n * t
            z = torch.randn(1, length, net.embed_dim)
            _, c, w = clock(lambda z=z: z + net.blocks[0](net.norm(z)) + net.mlp(net.norm(z)))
            lengths.append(length), cpus.append(c), walls.append(w)
        design = np.stack([lengths, np.square(lengths)], 1).astype(float)
        fit_cpu = np.linalg.lstsq(design, cpus, rcond=None)[0]
        fit_wall = np.linalg.lstsq(design, walls, rcond=None)[0]

    def model(t: int) -> dict:
        length = 1 + n * t
        attn = [float(len(net.blocks) * (f[0] * length + f[1] * length**2)) for f in (fit_cpu, fit_wall)]
        return {
            "stem_s": [per_frame[0] * t, per_frame[1] * t],
            "mamba_s": [per_token[0] * length, per_token[1] * length],
            "attention_s": attn,
        }

    check_t = 8  # validate the model against a direct forward at a few frames
    with torch.no_grad():
        _, d_cpu, d_wall = clock(lambda: net.forward_features(torch.randn(1, check_t, 1, *net.img_size)))
    small_pred = model(check_t)
    parts = model(frames)
    cpu = sum(v[0] for v in parts.values())
    wall = sum(v[1] for v in parts.values())
    check = {"frames": check_t, "direct_cpu_s": d_cpu, "model_cpu_s": sum(v[0] for v in small_pred.values())}
    return {"cpu_s": cpu, "wall_s": wall, "tokens": 1 + n * frames, "parts_cpu_wall_s": parts, "check": check}


def run_one(name: str, size: str, scan: str, atlas: tuple[str, str]) -> dict:
    cfg = OmegaConf.create(
        {
            "data": {"atlas": atlas[0], "atlas_coords": atlas[1]},
            "brain": OmegaConf.load(CONFIGS / f"{CONFIG_NAMES[name, size]}.yaml"),
        }
    )
    transform = instantiate(cfg.brain.transform)
    encoder = instantiate(cfg.brain.encoder).eval()
    params = sum(p.numel() for p in encoder.parameters())
    transform(scan)  # lazy set-up (maskers, imports) is not per-subject cost
    x, t_cpu, t_wall = clock(lambda: transform(scan))
    row = {"encoder": name, "size": size, "config": CONFIG_NAMES[name, size], "parameters": params,
           "input": list(x.shape), "preprocess_cpu_s": t_cpu, "preprocess_wall_s": t_wall,
           "extrapolated": False}  # fmt: skip
    if name == "brainmt" and size == "published":
        est = brainmt_extrapolated(encoder, x.shape[1])
        est["cpu_s"] *= x.shape[0]
        est["wall_s"] *= x.shape[0]
        row |= {"encode_cpu_s": est["cpu_s"], "encode_wall_s": est["wall_s"], "extrapolated": True, "detail": est}
    else:
        with torch.no_grad():
            if size == "tiny":
                encoder(x[None])  # warm-up
            _, e_cpu, e_wall = clock(lambda: encoder(x[None]))
        row |= {"encode_cpu_s": e_cpu, "encode_wall_s": e_wall}
    row["total_cpu_s"] = row["preprocess_cpu_s"] + row["encode_cpu_s"]
    row["total_wall_s"] = row["preprocess_wall_s"] + row["encode_wall_s"]
    print(f"{name:15s} {size:9s} {row['total_cpu_s']:9.2f} CPU s  {row['total_wall_s']:9.2f} wall s", flush=True)
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# fMRI encoders: CPU seconds per subject",
        "",
        f"{meta['cpu']}, {meta['threads']} torch threads, torch {meta['torch']}; {meta['date']}. "
        "One subject = transform from NIfTI (the config's evaluation windows) + encoder forward, random weights, "
        "no gradients. CPU s = process time over all threads; the machine is shared, numbers are indicative.",
        "",
        "| encoder | size | config | parameters | input (W, ...) | preprocess CPU s | encode CPU s | total CPU s "
        "| total wall s |",
        "|---|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        mark = " (extrapolated)" if r["extrapolated"] else ""
        lines.append(
            f"| {r['encoder']} | {r['size']} | {r['config']} | {r['parameters']:,} | {tuple(r['input'])} | "
            f"{r['preprocess_cpu_s']:.3f} | {r['encode_cpu_s']:.3f}{mark} | {r['total_cpu_s']:.3f} | "
            f"{r['total_wall_s']:.3f} |"
        )
    lines += ["", "Published BrainMT is extrapolated from the stem per frame, Mamba per token and a fitted a*L + b*L^2",
              "attention block (see bench_brain_encoders.py); its parts (CPU s, wall s):", ""]  # fmt: skip
    for r in rows:
        if r["extrapolated"]:
            d = r["detail"]
            for k, (c, w) in d["parts_cpu_wall_s"].items():
                lines.append(f"- {k[:-2]}: {c:.1f} CPU s, {w:.1f} wall s ({d['tokens']:,} tokens)")
            c = d["check"]
            lines.append(
                f"- check at {c['frames']} frames: direct forward {c['direct_cpu_s']:.1f} CPU s, "
                f"model {c['model_cpu_s']:.1f} CPU s"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(ENCODERS), help="comma-separated subset of " + ",".join(ENCODERS))
    ap.add_argument("--skip-published", action="store_true")
    ap.add_argument("--frames-tiny", type=int, default=150)
    ap.add_argument("--frames-published", type=int, default=220)
    args = ap.parse_args()
    torch.manual_seed(0)
    names = [n for n in args.only.split(",") if n]
    sizes = ["tiny"] if args.skip_published else ["tiny", "published"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for size in sizes:
            mask = mni_mask(size)
            frames = args.frames_tiny if size == "tiny" else args.frames_published
            scan = make_scan(tmp / f"scan_{size}.nii", mask, frames)
            atlas = make_atlas(tmp, mask, size)
            for name in names:
                rows.append(run_one(name, size, scan, atlas))
    meta = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    previous = RESULTS / "brain_encoders.json"
    if previous.exists():  # a partial run (--only / --skip-published) updates its rows and keeps the others
        done = {(r["encoder"], r["size"]) for r in rows}
        kept = [r for r in json.loads(previous.read_text())["rows"] if (r["encoder"], r["size"]) not in done]
        order = {k: i for i, k in enumerate(CONFIG_NAMES)}
        rows = sorted(kept + rows, key=lambda r: (r["size"] != "tiny", order[r["encoder"], r["size"]]))
    (RESULTS / "brain_encoders.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (RESULTS / "brain_encoders.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
