"""Strand embeddings, strand-invariant pooling, CaduceusProjector and CaduceusGenomicsEncoder."""

import pytest
import torch

from fusion.encoders import check_encoder
from genomics.alphabet import PAD_ID
from genomics.caduceus import Caduceus, CaduceusConfig, reverse_complement_ids
from genomics.caduceus.embedding import CaduceusEmbedder, CaduceusProjector, pool_strands
from genomics.models.caduceus import CaduceusGenomicsEncoder

TINY = dict(d_model=8, n_layer=2, ssm_backend="torch")


def backbone(rcps: bool, seed: int = 0) -> Caduceus:
    torch.manual_seed(seed)
    model = Caduceus(CaduceusConfig(rcps=rcps, **TINY))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def left_padded(b=3, length=20, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, 11, (b, length), generator=g)
    for i in range(b):
        ids[i, : int(torch.randint(0, length // 2, (1,), generator=g))] = PAD_ID
    return ids


@pytest.mark.parametrize("rcps,conjoin,shape", [(True, False, (3, 20, 8, 2)), (False, True, (3, 20, 8, 2)),
                                                 (False, False, (3, 20, 8))])  # fmt: skip
def test_embedder_shapes(rcps, conjoin, shape):
    emb = CaduceusEmbedder(backbone(rcps), conjoin=conjoin)
    with torch.no_grad():
        assert emb(left_padded()).shape == shape


@pytest.mark.parametrize("rcps", [True, False])
def test_pooled_embedding_is_rc_invariant(rcps):
    emb = CaduceusEmbedder(backbone(rcps), conjoin=True)
    ids = torch.randint(7, 12, (3, 20), generator=torch.Generator().manual_seed(2))  # bases and N, no pads
    rc = reverse_complement_ids(ids)
    with torch.no_grad():
        h, h_rc = emb(ids), emb(rc)
        mean, mean_rc = pool_strands(h, ids), pool_strands(h_rc, rc)
        cat, cat_rc = pool_strands(h, ids, "concat"), pool_strands(h_rc, rc, "concat")
    assert mean.shape == (3, 8) and cat.shape == (3, 16)
    torch.testing.assert_close(mean_rc, mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(cat_rc, torch.cat([cat[:, 8:], cat[:, :8]], 1), rtol=0, atol=1e-5)  # halves swap


def test_pooling_excludes_pads():
    h = torch.randn(2, 5, 4, 2)
    ids = torch.tensor([[PAD_ID, PAD_ID, 7, 8, 9], [7, 8, 9, 10, 7]])
    pooled = pool_strands(h, ids, "strands")  # (B, D, 2)
    torch.testing.assert_close(pooled[0, :, 0], h[0, 2:, :, 0].mean(0))
    torch.testing.assert_close(pooled[0, :, 1], h[0, :3, :, 1].mean(0))  # RC strand: pads at the end
    assert torch.equal(pool_strands(h, torch.full((2, 5), PAD_ID)), torch.zeros(2, 4))


def test_projector():
    proj = CaduceusProjector(16)
    assert proj(torch.randn(3, 16)).shape == (3, 512) and proj.output_dim == 512
    assert [type(m).__name__ for m in proj.net] == ["Linear", "GELU", "Dropout", "Linear", "LayerNorm"]
    assert proj.net[0].out_features == 1024


def subjects(b=2, r=3, length=16, seed=3) -> torch.Tensor:
    return left_padded(b * r * 2, length, seed).reshape(b, r, 2, length)  # (B, R, H, L)


@pytest.mark.parametrize("rcps", [True, False])
def test_encoder_interface_and_invariances(rcps):
    enc = CaduceusGenomicsEncoder(n_regions=3, config=dict(rcps=rcps, **TINY))
    check_encoder(enc, "genomics")
    ids = subjects()
    with torch.no_grad():
        out = enc(ids)
        swapped = enc(ids.flip(2))  # haplotype order
        out_rc = enc(reverse_complement_ids(ids))  # every region read off the other strand (pads move right)
    assert out.shape == (2, enc.output_dim) and enc.output_dim == 3 * 8
    torch.testing.assert_close(swapped, out, rtol=0, atol=1e-6)
    torch.testing.assert_close(out_rc, out, rtol=0, atol=1e-5)


def test_encoder_chunking_dedup_mean_pool_and_freeze():
    ids = subjects()
    ids[1] = ids[0]  # a duplicated subject
    kw = dict(n_regions=3, config=dict(rcps=True, **TINY))
    torch.manual_seed(0)
    a = CaduceusGenomicsEncoder(chunk_size=64, dedup=False, cache_size=0, **kw)
    torch.manual_seed(0)
    b = CaduceusGenomicsEncoder(chunk_size=5, dedup=True, **kw)
    with torch.no_grad():
        torch.testing.assert_close(a(ids), b(ids), rtol=0, atol=1e-6)
    assert all(not p.requires_grad for p in a.parameters())
    a.train()
    assert not a.embedder.training  # frozen backbone stays in eval mode
    torch.manual_seed(0)
    mean = CaduceusGenomicsEncoder(region_pool="mean", projector=True, freeze=False, **kw).train()
    out = mean(ids)
    assert out.shape == (2, 512) and mean.output_dim == 512
    out.sum().backward()
    assert mean.embedder.backbone.backbone.layers[0].norm.weight.grad is not None
    with pytest.raises(ValueError, match="regions"):
        mean(ids[:, :2])


def test_encoder_loads_a_local_checkpoint(tmp_path):
    from genomics.caduceus import CaduceusForMaskedLM

    torch.manual_seed(0)
    CaduceusForMaskedLM(CaduceusConfig(rcps=True, **TINY)).save_pretrained(tmp_path)
    enc = CaduceusGenomicsEncoder(n_regions=3, checkpoint=str(tmp_path), gradient_checkpointing=True)
    assert enc(subjects()).shape == (2, 24)
    with pytest.raises(ValueError, match="give a checkpoint"):
        CaduceusGenomicsEncoder(n_regions=3)


def test_frozen_encoder_memoises_sequence_embeddings():
    torch.manual_seed(0)
    enc = CaduceusGenomicsEncoder(n_regions=3, config=dict(rcps=True, **TINY))
    calls = []
    enc.embedder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    ids = subjects()
    with torch.no_grad():
        first = enc(ids)
        assert len(enc._cache) == len(torch.unique(ids.reshape(-1, 16), dim=0)) and calls
        calls.clear()
        torch.testing.assert_close(enc(ids), first, rtol=0, atol=0)
        assert not calls  # served from the cache
        enc.load_state_dict(enc.state_dict())
        assert not enc._cache  # loading weights invalidates it
