"""Site-aware pooling of CaduceusGenomicsEncoder ("sites", "diff"), the site offsets of the transform and the
consensus coordinate map they come from."""

import random
import warnings
from pathlib import Path

import numpy as np
import pysam
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import default_collate

from fusion.app.build import instantiate_with
from genomics.alphabet import PAD_ID, encode
from genomics.caduceus import CaduceusConfig, CaduceusForMaskedLM, reverse_complement_ids
from genomics.consensus import ConsensusWarning, Edit, apply_edits, reference_to_haplotype
from genomics.models.caduceus import CaduceusGenomicsEncoder, window_means
from genomics.regions import read_bed
from genomics.transforms import PersonalSequenceTokens

TINY = dict(d_model=8, n_layer=2, ssm_backend="torch")


# --- coordinate map ---
def mapped(ref, edits, start=100):
    origin = []
    seq = apply_edits(ref, start, [Edit("chr1", p - 1, r, a) for p, r, a in edits], origin=origin)
    assert len(origin) == len(seq)
    return seq, reference_to_haplotype(origin, len(ref))


def test_coordinate_map_follows_indels():
    ref = "ACGTACGTAC"  # positions 101..110
    seq, where = mapped(ref, [(103, "G", "GTT"), (106, "CGT", "C")])
    assert seq == "ACGTTTACAC"
    assert where.tolist() == [0, 1, 2, 5, 6, 7, 7, 7, 8, 9]  # insertion after G shifts by 2; deleted G, T -> anchor C
    assert seq[where[3]] == ref[3] and seq[where[8]] == ref[8]
    assert mapped(ref, [])[1].tolist() == list(range(10))
    seq, where = mapped(ref, [(100, "NAC", "N")])  # deletion reaching in from before the region: trimmed
    assert seq == "GTACGTAC" and where.tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]


def test_coordinate_map_leaves_the_haplotype_unchanged():
    rng = random.Random(0)
    ref = "".join(rng.choice("ACGT") for _ in range(200))
    for _ in range(20):
        edits, pos = [], 101
        while pos < 290:
            p0 = pos - 100 - 1
            kind = rng.choice(["snv", "ins", "del"])
            r = ref[p0 : p0 + (3 if kind == "del" else 1)]
            a = {"snv": "T" if r[0] != "T" else "A", "ins": r + "GG", "del": r[0]}[kind]
            edits.append(Edit("chr1", pos - 1, r, a))
            pos += rng.randint(4, 20)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConsensusWarning)
            origin = []
            assert apply_edits(ref, 100, edits, origin=origin) == apply_edits(ref, 100, edits)
        where = reference_to_haplotype(origin, len(ref))
        kept = [i for i in range(len(ref)) if i in set(origin)]
        hap = apply_edits(ref, 100, edits)
        assert all(where[i] == origin.index(i) for i in kept) and np.all(np.diff(where) >= 0)
        assert all(hap[where[i]].upper() == ref[i] for i in kept if not any(e.start - 100 == i for e in edits))


# --- transform ---
def _cohort(tmp_path, seed=0, n_samples=4):
    rng = random.Random(seed)
    seq = "".join(rng.choice("ACGT") for _ in range(400))
    (tmp_path / "ref.fa").write_text(">chr1\n" + "\n".join(seq[i : i + 60] for i in range(0, 400, 60)) + "\n")
    pysam.faidx(str(tmp_path / "ref.fa"))
    (tmp_path / "regions.bed").write_text("chr1\t50\t150\tr1\nchr1\t200\t300\tr2\n")
    hdr = pysam.VariantHeader()
    hdr.add_line("##contig=<ID=chr1,length=400>")
    hdr.add_line('##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">')
    samples = [f"s{i}" for i in range(n_samples)]
    for s in samples:
        hdr.add_sample(s)
    with pysam.VariantFile(str(tmp_path / "v.vcf.gz"), "wz", header=hdr) as vf:
        for k, pos in enumerate([*range(55, 145, 9), *range(205, 260, 11)]):  # 10 + 5 sites, none overlapping
            ref = seq[pos : pos + (3 if k % 3 == 2 else 1)]
            alt = ref + "GTA" if k % 3 == 1 else ref[0] if len(ref) > 1 else ("A" if ref != "A" else "C")
            rec = vf.new_record(contig="chr1", start=pos, alleles=(ref, alt))
            for s in samples:
                rec.samples[s]["GT"] = (rng.choice([0, 1]), rng.choice([0, 1]))
                rec.samples[s].phased = True
            vf.write(rec)
    pysam.tabix_index(str(tmp_path / "v.vcf.gz"), preset="vcf", force=True)
    return samples


@pytest.mark.parametrize("max_len", [None, 90])
def test_transform_site_offsets_point_at_each_allele(tmp_path, max_len):
    samples = _cohort(tmp_path)
    args = (tmp_path / "ref.fa", tmp_path / "v.vcf.gz", read_bed(tmp_path / "regions.bed"))
    t = PersonalSequenceTokens(*args, max_len=max_len, sites=True)
    assert PersonalSequenceTokens(*args).encoder_inputs() == {}  # the plain tensor path is unchanged
    assert torch.equal(PersonalSequenceTokens(*args, max_len=max_len)(samples[0]), t(samples[0])["ids"])
    haps, n_cropped = t.haplotypes, 0
    for s in samples:
        x = t(s)
        assert x["ids"].shape == (2, 2, t.length) and x["sites"].shape == (2, 2, 10) and t.n_sites == 10
        assert (x["sites"][1, :, 5:] == -1).all()  # region 2 has 5 sites
        for i in range(2):
            g, col = haps.region_genotypes(i), haps.sample_index(s)
            for h in range(2):
                for k, v in enumerate(g.variants):
                    allele = v.ref if g.codes[k, col, h] == 0 else v.alts[g.codes[k, col, h] - 1]
                    tok = int(x["sites"][i, h, k])
                    if tok < 0:
                        n_cropped += 1
                        continue
                    span = x["ids"][i, h, tok : tok + len(allele)].numpy()
                    assert np.array_equal(span, encode(allele, "PAD")[: len(span)]), (s, i, h, k)
    assert (n_cropped > 0) == (max_len is not None)
    ref = t.encoder_inputs()
    assert ref["reference_ids"].shape == (2, t.length) and ref["reference_sites"].shape == (2, 10)
    for i in range(2):
        for k, v in enumerate(haps.region_genotypes(i).variants):
            tok = int(ref["reference_sites"][i, k])
            assert tok < 0 or ref["reference_ids"][i, tok] == encode(v.ref[0], "PAD")[0]
    batch = default_collate([t(s) for s in samples[:3]])
    assert batch["ids"].shape == (3, 2, 2, t.length) and batch["sites"].shape == (3, 2, 2, 10)


# --- encoder ---
def test_window_means_exclude_pads_and_absent_sites():
    e = torch.arange(6.0).reshape(1, 6, 1).repeat(1, 1, 2)  # (1, L=6, D=2), value = position
    ids = torch.tensor([[PAD_ID, PAD_ID, 7, 8, 9, 10]])
    out = window_means(e, ids, torch.tensor([[2, 5, -1, 3]]), window=1)  # (1, 4, 2)
    assert out[0, :, 0].tolist() == [2.5, 4.5, 0.0, 3.0]  # [1..3] minus the pad at 1; [4..6] cut at L; -1 -> 0
    assert torch.equal(window_means(e, ids, torch.tensor([[3]]), 0)[0, 0], e[0, 3])


def inputs(b=2, r=3, length=24, s=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randint(7, 11, (r, length), generator=g)  # (R, L)
    ref_sites = torch.stack([torch.randperm(length - 6, generator=g)[:s].sort().values + 5 for _ in range(r)])
    ref_sites[0, -1] = -1  # region 0 has one site fewer
    ids = ref[None, :, None].repeat(b, 1, 2, 1)  # (B, R, H, L): reference haplotypes with some SNVs
    snv = torch.rand(b, r, 2, s, generator=g) < 0.5
    for bi, ri, hi, si in snv.nonzero().tolist():
        if ref_sites[ri, si] >= 0:
            p = ref_sites[ri, si]
            ids[bi, ri, hi, p] = 7 + (ids[bi, ri, hi, p] - 6) % 4
    ids[:, :, 1, :2] = PAD_ID  # haplotype 2 is shifted by a deletion-like padding: sites move with it
    ids[:, :, 1, 2:] = torch.cat([ids[:, :, 1, 4:], ref[None, :, -2:].repeat(b, 1, 1)], -1)
    sites = ref_sites[None, :, None].repeat(b, 1, 2, 1)
    sites[:, :, 1] = torch.where(ref_sites >= 0, ref_sites - 2, -1)
    return {"ids": ids, "sites": sites}, {"reference_ids": ref, "reference_sites": ref_sites}


def rc(x: dict, length: int) -> dict:
    return {"ids": reverse_complement_ids(x["ids"]), "sites": torch.where(x["sites"] >= 0, length - 1 - x["sites"], -1)}


@pytest.mark.parametrize("pool,site_pool", [("mean", "concat"), ("sites", "concat"), ("sites", "mean"),
                                            ("diff", "concat"), ("diff", "mean")])  # fmt: skip
@pytest.mark.parametrize("rcps", [True, False])
def test_every_mode_is_strand_and_haplotype_order_invariant(pool, site_pool, rcps):
    x, ref = inputs()
    torch.manual_seed(0)
    kw = dict(n_regions=3, config=dict(rcps=rcps, **TINY), pool=pool, window=2, site_pool=site_pool)
    enc = CaduceusGenomicsEncoder(**kw, **ref)
    torch.manual_seed(0)
    ref_rc = rc({"ids": ref["reference_ids"], "sites": ref["reference_sites"]}, 24)
    enc_rc = CaduceusGenomicsEncoder(**kw, reference_ids=ref_rc["ids"], reference_sites=ref_rc["sites"])
    with torch.no_grad():
        out = enc(x)
        swapped = enc({k: v.flip(2) for k, v in x.items()})
        out_rc = enc_rc(rc(x, 24))
    width = {"mean": 8, "concat": 4 * 8}[site_pool if pool != "mean" else "mean"]
    assert out.shape == (2, enc.output_dim) and enc.output_dim == 3 * width
    torch.testing.assert_close(swapped, out, rtol=0, atol=1e-6)
    torch.testing.assert_close(out_rc, out, rtol=0, atol=1e-5)
    assert out.abs().sum() > 0


def test_diff_is_zero_for_the_reference_and_sites_differ_where_alleles_do():
    x, ref = inputs()
    same = {"ids": ref["reference_ids"][None, :, None].repeat(1, 1, 2, 1),
            "sites": ref["reference_sites"][None, :, None].repeat(1, 1, 2, 1)}  # fmt: skip
    kw = dict(n_regions=3, config=dict(rcps=True, **TINY), **ref)
    torch.manual_seed(0)
    diff = CaduceusGenomicsEncoder(pool="diff", **kw)
    torch.manual_seed(0)
    sites = CaduceusGenomicsEncoder(pool="sites", **kw)
    with torch.no_grad():
        assert diff(same).abs().max() == 0
        torch.testing.assert_close(diff(x), sites(x) - sites(same), rtol=0, atol=1e-5)  # every site in both haps
    assert sites.output_dim == 3 * 4 * 8


def test_mean_mode_takes_the_dict_and_site_modes_need_sites():
    x, ref = inputs()
    torch.manual_seed(0)
    enc = CaduceusGenomicsEncoder(n_regions=3, config=dict(rcps=True, **TINY), **ref)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), enc(x["ids"]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="sites=True"):
        CaduceusGenomicsEncoder(n_regions=3, config=dict(rcps=True, **TINY), pool="sites")
    with pytest.raises(ValueError, match="pool must be"):
        CaduceusGenomicsEncoder(n_regions=3, config=dict(rcps=True, **TINY), pool="max", **ref)
    enc = CaduceusGenomicsEncoder(n_regions=3, config=dict(rcps=True, **TINY), pool="sites", **ref)
    with pytest.raises(ValueError, match="site offsets"):
        enc(x["ids"])
    assert "reference_ids" not in enc.state_dict()  # the transform provides them; checkpoints keep their keys


def test_site_embeddings_are_memoised_with_their_offsets():
    x, ref = inputs()
    torch.manual_seed(0)
    enc = CaduceusGenomicsEncoder(n_regions=3, config=dict(rcps=True, **TINY), pool="diff", **ref)
    calls = []
    enc.embedder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    with torch.no_grad():
        first = enc(x)
        calls.clear()
        torch.testing.assert_close(enc(x), first, rtol=0, atol=0)
        assert not calls  # haplotypes and reference served from the cache
        moved = {"ids": x["ids"], "sites": torch.where(x["sites"] >= 0, (x["sites"] + 1).clamp(max=23), -1)}
        enc(moved)
        assert calls  # same ids, other offsets: a new key


@pytest.mark.parametrize("pool", ["mean", "diff"])
def test_disk_cache_second_run_makes_no_backbone_pass(tmp_path, pool):
    x, ref = inputs()

    def run(seed, **kw):
        torch.manual_seed(seed)
        enc = CaduceusGenomicsEncoder(n_regions=3, config=dict(rcps=True, **TINY), pool=pool, window=1, **ref, **kw)
        calls = []
        enc.embedder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
        with torch.no_grad():
            return enc(x), calls, enc

    first, calls, enc = run(0, cache_dir=str(tmp_path))
    assert calls and len(enc.disk_cache()) > 0
    again, calls, _ = run(0, cache_dir=str(tmp_path))  # a new process would see the same: fresh memo, same folder
    assert not calls
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    no_memo, calls, _ = run(0, cache_dir=str(tmp_path), cache_size=0)
    assert not calls
    torch.testing.assert_close(no_memo, first, rtol=0, atol=0)
    other, calls, _ = run(1, cache_dir=str(tmp_path))  # other weights: another folder, embedded afresh
    assert calls and len(list(tmp_path.iterdir())) == 2
    plain, _, _ = run(0)
    torch.testing.assert_close(plain, first, rtol=0, atol=1e-6)


def test_site_norm_scales_each_site_by_its_training_maximum():
    x, ref = inputs(b=4)
    kw = dict(n_regions=3, config=dict(rcps=True, **TINY), pool="diff", window=1, **ref)
    torch.manual_seed(0)
    raw = CaduceusGenomicsEncoder(**kw)
    torch.manual_seed(0)
    enc = CaduceusGenomicsEncoder(site_norm=True, **kw)
    items = [{k: v[i] for k, v in x.items()} for i in range(4)]  # what the module's fit_inputs hand over
    with pytest.raises(RuntimeError, match="fit"):
        enc(x)
    enc.fit(iter(items), batch_size=3)
    assert bool(enc.fitted) and {"site_scale", "fitted"} <= set(enc.state_dict())
    with torch.no_grad():
        out, base = enc(x).reshape(4, 3, 4, 8), raw(x).reshape(4, 3, 4, 8)
    best = base.norm(dim=-1).amax(0)  # (R, S)
    floor = 0.1 * best[best > 0].median()
    torch.testing.assert_close(enc.site_scale, torch.maximum(best, floor), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, base / enc.site_scale[None, :, :, None], rtol=1e-5, atol=1e-6)
    assert out.norm(dim=-1).amax(0).max() <= 1 + 1e-5  # every site's largest training block has norm <= 1
    with torch.no_grad():  # still strand and haplotype-order invariant: the scales are per site
        torch.testing.assert_close(enc({k: v.flip(2) for k, v in x.items()}), enc(x), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="pool='diff'"):
        CaduceusGenomicsEncoder(**(kw | {"pool": "sites"}), site_norm=True)


# --- configs: every Caduceus config takes its pooling from configs/genomics/pooling/ ---
CONFIGS = ["caduceus_tiny", "caduceus_ps_131k", "caduceus_ph_131k", "caduceus_ps_1k", "caduceus_ph_1k"]
POOLING = Path(__file__).resolve().parents[2] / "configs" / "genomics" / "pooling"


def _genomics(train_config, tmp_path, *overrides):
    return train_config(tmp_path, tmp_path / "cache", [f"paths.root_dir={tmp_path}", *overrides]).genomics


def _assert_has(cfg, expected, where=""):
    for key, value in expected.items():
        if isinstance(value, dict):
            _assert_has(cfg[key], value, f"{where}{key}.")
        else:
            assert cfg[key] == value, f"{where}{key}: {cfg[key]!r} != {value!r}"


@pytest.mark.parametrize("name", CONFIGS)
def test_caduceus_configs_default_to_the_diff_pooling_and_switch_to_mean(name, tmp_path, train_config):
    default = OmegaConf.to_container(OmegaConf.load(POOLING / "diff.yaml"))
    cfg = _genomics(train_config, tmp_path, f"genomics={name}")
    _assert_has(cfg, default)  # transform.sites, encoder.pool/window/site_pool/site_norm, head.input_norm
    assert cfg.transform.sites and cfg.encoder.pool == "diff"
    mean = _genomics(train_config, tmp_path, f"genomics={name}", "genomics/pooling=mean")
    assert not mean.transform.sites and mean.encoder.pool == "mean" and mean.head.input_norm  # the projection's
    assert "site_norm" not in mean.encoder and cfg.encoder.checkpoint == mean.encoder.checkpoint


def test_the_default_pooling_builds_fits_and_feeds_the_head(tmp_path, train_config):
    folder = tmp_path / "mlm"
    CaduceusForMaskedLM(CaduceusConfig(d_model=8, n_layer=2, rcps=True)).save_pretrained(folder)
    cfg = _genomics(train_config, tmp_path, "genomics=caduceus_tiny", f"genomics.encoder.checkpoint={folder}")
    x, ref = inputs(b=4)
    enc = instantiate_with(cfg.encoder, {"n_regions": 3, **ref})  # what fusion.app.build hands it
    enc.fit([{k: v[i] for k, v in x.items()} for i in range(4)])  # the module's on_fit_start
    with torch.no_grad():
        out = enc(x)
    assert out.shape == (4, enc.output_dim) and enc.output_dim == 3 * 4 * 8  # R x S x D
    assert out.reshape(4, 3, 4, 8).norm(dim=-1).amax(0).max() <= 1 + 1e-5 and out.abs().sum() > 0
    head = instantiate(cfg.head)(in_dim=enc.output_dim)
    assert isinstance(head.input_norm, torch.nn.Identity) and head(out).shape == (4, head.output_dim)
    assert len(enc.disk_cache()) > 0 and str(enc.disk_cache().root).startswith(str(tmp_path / "cache"))
