"""Loading and saving Caduceus checkpoints in the published layout, from local folders only."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from genomics.caduceus import (
    Caduceus,
    CaduceusConfig,
    CaduceusForMaskedLM,
    CaduceusForSequenceClassification,
    CheckpointMismatchError,
)
from genomics.caduceus.loading import tied_aliases
from genomics.checkpoints import sha256_file


def tiny(rcps=True, **kw) -> CaduceusConfig:
    return CaduceusConfig(**(dict(d_model=8, n_layer=2, rcps=rcps, ssm_backend="torch") | kw))


def random_model(cls=CaduceusForMaskedLM, seed=0, **kw):
    torch.manual_seed(seed)
    model = cls(tiny(**kw))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


IDS = torch.randint(4, 12, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("rcps", [True, False])
@pytest.mark.parametrize("cls", [CaduceusForMaskedLM, Caduceus, CaduceusForSequenceClassification])
def test_save_load_round_trip(tmp_path, cls, rcps):
    model = random_model(cls, rcps=rcps)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "caduceus" and config["architectures"] == [cls.__name__]
    stored = load_file(tmp_path / "model.safetensors")
    assert not set(stored) & set(tied_aliases(model))  # tied aliases are not written, as in the published files
    back = cls.from_pretrained(tmp_path)
    assert same_weights(model, back) and not back.training
    with torch.no_grad():
        torch.testing.assert_close(back(IDS)[0], model(IDS)[0], rtol=0, atol=0)
    mixer = back.caduceus.backbone.layers[0].mixer if cls is not Caduceus else back.backbone.layers[0].mixer
    mixer = mixer.submodule if rcps else mixer
    assert mixer.mamba_rev.in_proj.weight is mixer.mamba_fwd.in_proj.weight  # re-tied after loading


@pytest.mark.parametrize("rcps", [True, False])
def test_loads_with_or_without_prefix_and_tied_aliases(tmp_path, rcps):
    model = random_model(rcps=rcps)
    model.save_pretrained(tmp_path)
    full = model.state_dict()  # every alias present (what torch.save(model.state_dict()) gives)
    variants = {
        "with_aliases": {k: v.clone() for k, v in full.items()},
        "no_prefix": {k.removeprefix("caduceus."): v for k, v in load_file(tmp_path / "model.safetensors").items()},
    }
    for name, sd in variants.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text((tmp_path / "config.json").read_text())
        save_file({k: v.contiguous() for k, v in sd.items()}, folder / "model.safetensors")
        assert same_weights(CaduceusForMaskedLM.from_pretrained(folder), model), name
    backbone = Caduceus.from_pretrained(tmp_path)  # the LM checkpoint into the backbone class: prefix stripped
    assert same_weights(backbone, model.caduceus)


def test_reads_pytorch_model_bin_with_weights_only(tmp_path):
    model = random_model()
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    assert same_weights(CaduceusForMaskedLM.from_pretrained(tmp_path), model)


def test_sharded_safetensors_folder_and_file_hash(tmp_path):
    model = random_model()
    model.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in shards.items():
        save_file({k: sd[k] for k in part}, tmp_path / name)
    weight_map = {k: name for name, part in shards.items() for k in part}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert same_weights(CaduceusForMaskedLM.from_pretrained(tmp_path), model)
    path = tmp_path / "model-00001-of-00002.safetensors"
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_file(path, chunk_size=7) == sha256_file(path)  # streamed in chunks


def test_missing_unexpected_and_shape_mismatch_name_the_keys(tmp_path):
    model = random_model()
    model.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    cases = {
        "missing": ({k: v for k, v in sd.items() if "layers.1.norm" not in k}, "missing keys: .*layers.1.norm.weight"),
        "unexpected": (sd | {"caduceus.backbone.extra.weight": torch.zeros(1)}, "unexpected keys: .*extra.weight"),
        "shape": (sd | {"caduceus.backbone.norm_f.weight": torch.zeros(3)}, r"norm_f.weight: \(3,\) vs \(8,\)"),
    }
    for bad, message in cases.values():
        save_file(bad, tmp_path / "model.safetensors")
        with pytest.raises(CheckpointMismatchError, match=message):
            CaduceusForMaskedLM.from_pretrained(tmp_path)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match="unexpected keys"):  # PH weights into a PS config
        ph = random_model(rcps=False)
        ph.save_pretrained(tmp_path / "ph")
        CaduceusForMaskedLM.from_pretrained(tmp_path / "ph", config=tiny(rcps=True))


def test_tied_alias_that_differs_from_its_source_is_an_error(tmp_path):
    model = random_model(rcps=False)
    model.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    sd["lm_head.weight"] = torch.zeros(16, 8)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match="tied parameters differ"):
        CaduceusForMaskedLM.from_pretrained(tmp_path)


def test_masked_lm_checkpoint_into_a_classifier(tmp_path):
    lm = random_model()
    lm.save_pretrained(tmp_path)
    clf = CaduceusForSequenceClassification.from_pretrained(tmp_path, num_labels=2, pooling_strategy="max")
    assert clf.pooling_strategy == "max" and clf.score.weight.shape == (2, 8)
    assert same_weights(clf.caduceus, lm.caduceus)


def test_published_config_json_is_read_without_remote_code(tmp_path):
    model = random_model()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForMaskedLM": "modeling_caduceus.CaduceusForMaskedLM"}  # never executed
    config["complement_map"] = {str(k): v for k, v in config["complement_map"].items()}
    (tmp_path / "config.json").write_text(json.dumps(config))
    back = CaduceusForMaskedLM.from_pretrained(tmp_path, ssm_backend="torch")
    assert back.config.complement_map[7] == 10 and back.config.ssm_backend == "torch"
    with pytest.raises(ValueError, match="trust_remote_code"):
        CaduceusForMaskedLM.from_pretrained(tmp_path, trust_remote_code=True)
    with pytest.raises(FileNotFoundError, match="local checkpoint folders only"):
        CaduceusForMaskedLM.from_pretrained("kuleshov-group/caduceus-ps_seqlen-131k_d_model-256_n_layer-16")
    with pytest.raises(TypeError, match="unknown argument"):
        CaduceusForMaskedLM.from_pretrained(tmp_path, not_a_field=1)
