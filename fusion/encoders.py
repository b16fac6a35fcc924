"""The modality-encoder interface every genomics and brain encoder implements (structurally; no import needed).

An encoder is a torch.nn.Module with
    output_dim: int                      # d, the width of its pooled output
    forward(x: Tensor) -> Tensor         # (B, ...) -> (B, d)
and, optionally,
    fit(inputs: Iterable[Tensor]) -> None  # data-fitted baselines (e.g. tangent connectivity): training split only
    freeze: bool                         # set by genomics.freeze.Freezable: the tower then trains the head only

Its inputs come from a transform (a plain callable, built from the same Hydra config group):
    genomics transform: transform(subject_id) -> LongTensor (R, H, L)    # regions x haplotypes x tokens
                        ids are the CaduceusTokenizer ids of genomics.alphabet, left-padded with [PAD];
                        or, with PersonalSequenceTokens(sites=True), a dict {"ids": (R, H, L), "sites": (R, H, S)}:
                        the token offset in ids of each VCF site of the region (same s for the same site in every
                        subject; -1 = padding/cropped), batched by default_collate into {"ids": (B, R, H, L),
                        "sites": (B, R, H, S)} (site-aware encoders, e.g. CaduceusGenomicsEncoder(pool="sites"))
    brain transform:    transform(fmri_path, train=bool, rng=np.random.Generator|None) -> FloatTensor (W, ...)
                        W windows of the scan in the encoder's native layout (parcel series (W, T, P), SwiFT volumes
                        (W, 1, X, Y, Z, T), BrainMT (W, T, 1, X, Y, Z)); training draws one random window (W=1),
                        evaluation returns a fixed set of windows whose embeddings the encoder averages.
Cohort facts reach transforms and encoders by constructor parameter name: fusion.app.build loads the cohort once
(fusion.cohort.load_cohort) and passes each of these that the constructor names and the config leaves unset
(Cohort.inputs):
    genomics: reference (FASTA path), vcf (path), genotypes (path), regions (list[genomics.regions.Region], after
              exclusion), n_regions (R), train_subjects (ids), subjects (the Cohort.subjects table)
    brain:    atlas (label image in memory), labels (sorted atlas labels, the P axis),
              atlas_coords / coords (brain.preprocess.AtlasCoords or None), n_parcels (P)
so a config never names a cohort file or count; then what the transform derives from the data, by the same rule
(transform.encoder_inputs(), when it has one): GenotypeDosages -> n_sites, train_means; PersonalSequenceTokens(
sites=True) -> reference_ids (R, L) and reference_sites (R, S), the regions' reference tokenised like a haplotype.
Transforms open nothing until first called and are picklable. Several genetic inputs at once (genomics_inputs in
train.yaml; fusion.multi_input): each input is a transform + encoder + head as above, and the tower's transform,
encoder and head are their MultiInput* combinations (a dict {"inputs", "mask"} per subject, then (B, sum d_i + N)).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class ModalityEncoder(Protocol):
    output_dim: int

    def __call__(self, x: Tensor) -> Tensor: ...


def check_encoder(encoder: object, name: str) -> None:
    """Fail early, naming the config group, when an object does not implement the encoder interface."""
    if not isinstance(encoder, ModalityEncoder) or not isinstance(getattr(encoder, "output_dim", None), int):
        raise TypeError(f"{name} encoder {type(encoder).__name__} must be an nn.Module with an int `output_dim`")
