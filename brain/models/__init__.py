"""fMRI encoder adapters (upstream-shaped networks behind the genobrain encoder interface, see fusion/encoders.py).

    BrainLMMAEEncoder     BrainLM "brainlm_mae" (Nystromformer MAE, parcel x 20-TR tokens)  input (B, W, T, P)
    BrainLMViTMAEEncoder  BrainLM ViT-MAE 111M / 650M (parcel x time image)                input (B, W, T, P)
    SwiFTEncoder          SwiFT Swin 4D transformer                                        input (B, W, 1, X, Y, Z, T)
    BrainMTEncoder        BrainMT Mamba + Transformer                                      input (B, W, T, 1, Y, X, Z)
Each exposes the network as `.backbone` (upstream key names) and `output_dim`; it averages its W window embeddings.
"""

from brain.models.brainlm_mae import BrainLMMAEEncoder
from brain.models.brainlm_vitmae import BrainLMViTMAEEncoder
from brain.models.brainmt import BrainMTEncoder
from brain.models.swift import SwiFTEncoder

__all__ = ["BrainLMMAEEncoder", "BrainLMViTMAEEncoder", "BrainMTEncoder", "SwiFTEncoder"]
