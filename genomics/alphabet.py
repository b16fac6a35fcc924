"""The DNA alphabet of the published Caduceus checkpoints (CaduceusTokenizer ids) and fast numpy encoding.

ids: [CLS]=0 [SEP]=1 [BOS]=2 [MASK]=3 [PAD]=4 [RESERVED]=5 [UNK]=6, A=7 C=8 G=9 T=10 N=11
(vocab 12, padded to 16 in the model).
Every genomics input in genobrain is a LongTensor of these ids: the k-mer baseline and Caduceus read the same batches.
N policy (default): N -> [PAD] (id 4), as the published models saw N in pretraining (hg38 loader); `n_as="N"` keeps 11.
Complement: the one base table BASE_COMPLEMENT (A<->T, C<->G, N<->N) gives both the string table (reverse_complement)
and the id map COMPLEMENT_MAP / its tensor form complement_table (specials map to themselves).
"""

from __future__ import annotations

import numpy as np
import torch

SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")
CLS_ID, SEP_ID, BOS_ID, MASK_ID, PAD_ID, RESERVED_ID, UNK_ID = range(7)
NUCLEOTIDES = "ACGTN"
A_ID, C_ID, G_ID, T_ID, N_ID = 7, 8, 9, 10, 11
VOCAB_SIZE = 12
BASE_COMPLEMENT = dict(zip(NUCLEOTIDES, "TGCAN"))  # A->T C->G G->C T->A N->N
# complement map over the padded vocabulary (16): specials and N map to themselves, A<->T, C<->G
COMPLEMENT_MAP = {i: i for i in range(16)} | {
    A_ID + i: A_ID + NUCLEOTIDES.index(BASE_COMPLEMENT[ch]) for i, ch in enumerate(NUCLEOTIDES)
}
_STR_COMPLEMENT = str.maketrans(
    "".join(BASE_COMPLEMENT) + "".join(BASE_COMPLEMENT).lower(),
    "".join(BASE_COMPLEMENT.values()) + "".join(BASE_COMPLEMENT.values()).lower(),
)

_LUT = np.full(256, UNK_ID, dtype=np.int64)
for _i, _ch in enumerate(NUCLEOTIDES):
    _LUT[ord(_ch)] = _LUT[ord(_ch.lower())] = A_ID + _i


def encode(seq: str, n_as: str = "PAD") -> np.ndarray:
    """Upper-case and map a DNA string to ids (L,); N -> [PAD] by default (see module docstring), others -> [UNK]."""
    if n_as not in ("PAD", "N"):
        raise ValueError(f"n_as must be 'PAD' or 'N', got {n_as!r}")
    ids = _LUT[np.frombuffer(seq.encode("latin-1", errors="replace"), dtype=np.uint8)]
    if n_as == "PAD":
        ids[ids == N_ID] = PAD_ID
    return ids


def reverse_complement(seq: str) -> str:
    """Reverse complement of a DNA string; case is kept, characters other than ACGTN (any case) are only reversed."""
    return seq.translate(_STR_COMPLEMENT)[::-1]


def complement_table(vocab_size: int | None = None, complement_map: dict | None = None) -> torch.Tensor:
    """An id -> complement id map (default COMPLEMENT_MAP) as a LongTensor lookup table (vocab_size,); ids the map
    lacks map to themselves. vocab_size defaults to the map's length."""
    cmap = complement_map if complement_map is not None else COMPLEMENT_MAP
    n = len(cmap) if vocab_size is None else vocab_size
    return torch.tensor([int(cmap.get(i, i)) for i in range(n)], dtype=torch.long)


def pad_left(ids: np.ndarray, length: int) -> np.ndarray:
    """Left-pad with [PAD] (the published tokenizer's padding side) or keep the central `length` ids."""
    if len(ids) >= length:
        start = (len(ids) - length) // 2
        return ids[start : start + length]
    return np.concatenate([np.full(length - len(ids), PAD_ID, dtype=ids.dtype), ids])
