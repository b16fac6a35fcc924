"""The DNA alphabet of the published Caduceus checkpoints (CaduceusTokenizer ids) and fast numpy encoding.

ids: [CLS]=0 [SEP]=1 [BOS]=2 [MASK]=3 [PAD]=4 [RESERVED]=5 [UNK]=6, A=7 C=8 G=9 T=10 N=11
(vocab 12, padded to 16 in the model).
Every genomics input in genobrain is a LongTensor of these ids: the k-mer baseline and Caduceus read the same batches.
N policy (default): N -> [PAD] (id 4), as the published models saw N in pretraining (hg38 loader); `n_as="N"` keeps 11.
"""

from __future__ import annotations

import numpy as np

SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")
CLS_ID, SEP_ID, BOS_ID, MASK_ID, PAD_ID, RESERVED_ID, UNK_ID = range(7)
NUCLEOTIDES = "ACGTN"
A_ID, C_ID, G_ID, T_ID, N_ID = 7, 8, 9, 10, 11
VOCAB_SIZE = 12
# complement map over the padded vocabulary (16): specials and N map to themselves, A<->T, C<->G
COMPLEMENT_MAP = {i: i for i in range(16)} | {A_ID: T_ID, C_ID: G_ID, G_ID: C_ID, T_ID: A_ID}

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


def complement_ids(ids: np.ndarray) -> np.ndarray:
    """Complement (not reversed) of an id array of any shape."""
    lut = np.array([COMPLEMENT_MAP[i] for i in range(16)], dtype=np.int64)
    return lut[ids]


def pad_left(ids: np.ndarray, length: int) -> np.ndarray:
    """Left-pad with [PAD] (the published tokenizer's padding side) or keep the central `length` ids."""
    if len(ids) >= length:
        start = (len(ids) - length) // 2
        return ids[start : start + length]
    return np.concatenate([np.full(length - len(ids), PAD_ID, dtype=ids.dtype), ids])
