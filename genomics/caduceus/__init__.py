"""Caduceus (Schiff et al. 2024): bidirectional, reverse-complement-equivariant Mamba DNA language models.

Weight-compatible with the published kuleshov-group checkpoints (local folders only, no remote code).
See kb/caduceus.md.
"""

from genomics.caduceus.config import CaduceusConfig
from genomics.caduceus.loading import CheckpointMismatchError
from genomics.caduceus.modeling import (
    Caduceus,
    CaduceusForMaskedLM,
    CaduceusForSequenceClassification,
    CaduceusPreTrainedModel,
)
from genomics.caduceus.tokenizer import CaduceusTokenizer, reverse_complement, reverse_complement_ids

__all__ = [
    "Caduceus",
    "CaduceusConfig",
    "CaduceusForMaskedLM",
    "CaduceusForSequenceClassification",
    "CaduceusPreTrainedModel",
    "CaduceusTokenizer",
    "CheckpointMismatchError",
    "reverse_complement",
    "reverse_complement_ids",
]
