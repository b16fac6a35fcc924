"""CaduceusTokenizer: the character tokenizer shipped with the published Caduceus checkpoints, plus strand utilities.

References: kuleshov-group/caduceus `caduceus/tokenization_caduceus.py` (ids, upper-casing, [SEP]-only specials,
left padding); ids, complement map and the string reverse_complement come from genomics.alphabet.

Behaviour (same as the published tokenizer unless noted):
- ids [CLS]=0 [SEP]=1 [BOS]=2 [MASK]=3 [PAD]=4 [RESERVED]=5 [UNK]=6 A=7 C=8 G=9 T=10 N=11; `len(tok) == 12`.
- input is upper-cased; any other character -> [UNK].
- `add_special_tokens=True` (the default) appends one [SEP] per sequence, no [CLS]/[BOS]; the published models were
  pretrained and evaluated with `add_special_tokens=False`.
- padding on the left; no attention mask is returned (the model takes none: pads are processed as tokens).
- N policy (genobrain's choice, see genomics.alphabet): `n_as="PAD"` (default) encodes N as [PAD] (id 4), which is what
  the published models saw for N during pretraining; `n_as="N"` keeps id 11, exactly like the published tokenizer.
"""

from __future__ import annotations

from torch import Tensor
from transformers import PreTrainedTokenizer

from genomics.alphabet import COMPLEMENT_MAP, NUCLEOTIDES, PAD_ID, SPECIAL_TOKENS, UNK_ID, complement_table
from genomics.alphabet import reverse_complement as reverse_complement  # re-exported (genomics.caduceus)


def reverse_complement_ids(ids: Tensor, complement_map: Tensor | dict | None = None) -> Tensor:
    """Reverse complement of token ids (..., L): complement every id and flip the length axis (the last one).

    Left padding becomes right padding; callers that need left-padded input re-pad (the Caduceus models do not).
    """
    table = complement_map if isinstance(complement_map, Tensor) else complement_table(complement_map=complement_map)
    return table.to(ids.device)[ids.flip(-1)]  # (..., L)


class CaduceusTokenizer(PreTrainedTokenizer):
    """Character-level DNA tokenizer with the ids of the published Caduceus checkpoints (see module docstring)."""

    model_input_names = ["input_ids"]

    def __init__(self, model_max_length: int = 131072, n_as: str = "PAD", **kwargs):
        if n_as not in ("PAD", "N"):
            raise ValueError(f"n_as must be 'PAD' or 'N', got {n_as!r}")
        characters = tuple(kwargs.pop("characters", NUCLEOTIDES))
        if "".join(characters) != NUCLEOTIDES:
            raise ValueError(f"CaduceusTokenizer has the fixed characters {NUCLEOTIDES!r}, got {characters!r}")
        kwargs.pop("complement_map", None)  # published tokenizer_config.json may carry it; ours is fixed (alphabet)
        self.n_as = n_as
        self._vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)} | {ch: 7 + i for i, ch in enumerate(NUCLEOTIDES)}
        self._id_to_token = {i: tok for tok, i in self._vocab.items()}
        defaults = dict(
            bos_token="[BOS]",
            eos_token="[SEP]",
            sep_token="[SEP]",
            cls_token="[CLS]",
            pad_token="[PAD]",
            mask_token="[MASK]",
            unk_token="[UNK]",
            padding_side="left",
            add_prefix_space=False,
        )
        super().__init__(model_max_length=model_max_length, n_as=n_as, **(defaults | kwargs))

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    @property
    def complement_map(self) -> dict[int, int]:
        """id -> complement id over the 12 ids (A<->T, C<->G, everything else to itself)."""
        return {i: COMPLEMENT_MAP[i] for i in range(self.vocab_size)}

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return list(text.upper())

    def _convert_token_to_id(self, token: str) -> int:
        if token == "N" and self.n_as == "PAD":
            return PAD_ID
        return self._vocab.get(token, UNK_ID)

    def _convert_id_to_token(self, index: int) -> str:
        return self._id_to_token.get(int(index), "[UNK]")

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens)

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None):
        out = token_ids_0 + [self.sep_token_id]
        if token_ids_1 is not None:
            out += token_ids_1 + [self.sep_token_id]
        return out

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens: bool = False):
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, already_has_special_tokens=True)
        mask = [0] * len(token_ids_0) + [1]
        if token_ids_1 is not None:
            mask += [0] * len(token_ids_1) + [1]
        return mask

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple:
        return ()  # the vocabulary is fixed; tokenizer_config.json holds everything needed
