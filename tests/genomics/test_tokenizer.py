"""CaduceusTokenizer: published ids and behaviour, the N policy, save/load, reverse-complement utilities."""

import json

import numpy as np
import pytest
import torch

from genomics.alphabet import encode
from genomics.caduceus import CaduceusTokenizer, reverse_complement, reverse_complement_ids


def test_mixed_case_n_and_invalid_characters():
    tok = CaduceusTokenizer()  # default N policy: N -> [PAD] (4)
    assert tok("acGtNnxA-", add_special_tokens=False)["input_ids"] == [7, 8, 9, 10, 4, 4, 6, 7, 6]
    published = CaduceusTokenizer(n_as="N")  # the published tokenizer's behaviour: N -> 11
    assert published("acGtNnxA-", add_special_tokens=False)["input_ids"] == [7, 8, 9, 10, 11, 11, 6, 7, 6]


def test_matches_the_numpy_alphabet_encoder():
    seq = "ACGTNacgtnRYK*"
    for n_as in ("PAD", "N"):
        ids = CaduceusTokenizer(n_as=n_as)(seq, add_special_tokens=False)["input_ids"]
        assert ids == encode(seq, n_as=n_as).tolist()


def test_vocab_specials_and_default_special_tokens():
    tok = CaduceusTokenizer(n_as="N")
    assert len(tok) == 12 and tok.vocab_size == 12
    assert tok.get_vocab() == {
        "[CLS]": 0, "[SEP]": 1, "[BOS]": 2, "[MASK]": 3, "[PAD]": 4, "[RESERVED]": 5, "[UNK]": 6,
        "A": 7, "C": 8, "G": 9, "T": 10, "N": 11,
    }  # fmt: skip
    assert (tok.cls_token_id, tok.sep_token_id, tok.bos_token_id, tok.mask_token_id) == (0, 1, 2, 3)
    assert (tok.pad_token_id, tok.unk_token_id, tok.eos_token_id) == (4, 6, 1)
    assert tok("ACG")["input_ids"] == [7, 8, 9, 1]  # add_special_tokens=True appends only [SEP]
    assert tok("ACG", "T")["input_ids"] == [7, 8, 9, 1, 10, 1]
    assert tok.get_special_tokens_mask([7, 8, 9]) == [0, 0, 0, 1]
    assert tok("AC[MASK]G", add_special_tokens=False)["input_ids"] == [7, 8, 3, 9]
    assert tok.decode([7, 8, 11, 3]) == "ACN[MASK]"
    assert tok.complement_map == {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 10, 8: 9, 9: 8, 10: 7, 11: 11}


def test_left_padding_and_no_attention_mask():
    tok = CaduceusTokenizer()
    batch = tok(["ACGT", "GG"], padding=True, add_special_tokens=False, return_tensors="pt")
    assert list(batch.keys()) == ["input_ids"]
    assert batch["input_ids"].tolist() == [[7, 8, 9, 10], [4, 4, 9, 9]]
    assert tok.model_max_length == 131072 and tok.padding_side == "left"


def test_save_pretrained_round_trip(tmp_path):
    tok = CaduceusTokenizer(n_as="N", model_max_length=1024)
    tok.save_pretrained(tmp_path)
    back = CaduceusTokenizer.from_pretrained(tmp_path)
    assert back.n_as == "N" and back.model_max_length == 1024 and back.padding_side == "left"
    assert back("ACGTNx")["input_ids"] == tok("ACGTNx")["input_ids"] == [7, 8, 9, 10, 11, 6, 1]


def test_loads_a_published_tokenizer_config(tmp_path):
    cfg = {  # the fields of the published tokenizer_config.json (auto_map points at remote code: ignored)
        "auto_map": {"AutoTokenizer": ["tokenization_caduceus.CaduceusTokenizer", None]},
        "characters": ["A", "C", "G", "T", "N"],
        "model_max_length": 131072,
        "padding_side": "left",
        "tokenizer_class": "CaduceusTokenizer",
        "clean_up_tokenization_spaces": True,
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = CaduceusTokenizer.from_pretrained(tmp_path)
    assert tok("acgtn", add_special_tokens=False)["input_ids"] == [7, 8, 9, 10, 4]
    with pytest.raises(ValueError, match="fixed characters"):
        CaduceusTokenizer(characters=("A", "C"))


def test_reverse_complement_string_and_ids():
    assert reverse_complement("AACGTn") == "nACGTT"
    assert reverse_complement("ACGX") == "XCGT"
    tok = CaduceusTokenizer(n_as="N")
    seq = "".join(np.random.default_rng(0).choice(list("ACGTN"), 50))
    ids = torch.tensor(tok(seq, add_special_tokens=False)["input_ids"])
    rc = torch.tensor(tok(reverse_complement(seq), add_special_tokens=False)["input_ids"])
    assert torch.equal(reverse_complement_ids(ids), rc)
    batch = torch.stack([ids, rc])  # (2, L): works on the last axis of any batch shape
    assert torch.equal(reverse_complement_ids(reverse_complement_ids(batch)), batch)
    assert torch.equal(reverse_complement_ids(torch.tensor([4, 4, 7, 8])), torch.tensor([9, 10, 4, 4]))
