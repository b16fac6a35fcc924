"""Several genetic inputs in one genomics tower, each with its own encoder and projection head, combined into the
genomics embedding with per-subject missing masks, so a subject lacking one input still trains on the rest.

Late fusion of per-input projections (as ImageBind combines modalities by summing their embeddings; Girdhar et al.
2023), averaged over the inputs a subject has (masked mean, as for missing modalities in multimodal learning).

Syntax (kb/fusion.md): the main input stays `genomics=<option>`; each further input is another configs/genomics option
placed under `genomics_inputs.<name>` with Hydra's package syntax, so `-m genomics=a,b` sweeps the main input only:
    python -m fusion.train genomics=caduceus_tiny +genomics@genomics_inputs.dosage=dosage
    python -m fusion.train +genomics@genomics_inputs.prs=columns 'genomics_inputs.prs.transform.columns=[prs]'
Data flow (N inputs, "main" first; d_i = input i's encoder output_dim; D = model.embed_dim):
    MultiInputTransform: subject -> {"inputs": {name: x_i}, "mask": BoolTensor (N,)}  (x_i = zeros where missing)
    MultiInputEncoder:   -> (B, sum_i d_i + N) = [f_1 | ... | f_N | mask]              (f_i = 0 where missing)
    MultiInputHead:      -> (B, D) = sum_i m_i h_i(f_i) / sum_i m_i                     (h_i: input i's own head)
The encoder's output holds every input's raw features and no trained weight: it is what the frozen-feature cache
stores and what evaluation's probes and CCA/PLS read. An input is missing for a subject when its transform raises
KeyError: genomics.errors.SampleNotFound (the subject is not a sample of that input's genotype file) or MissingInput
(a manifest value is empty). The main input is never missing (the cohort's own files cover every subject).
Library code: no Lightning, no Hydra.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

MAIN = "main"  # the name of the `genomics=` input among the inputs


class MissingInput(KeyError):
    """A subject has no value for an input (e.g. an empty manifest cell): the input is masked for that subject."""


def _zeros_like(x):
    return {k: _zeros_like(v) for k, v in x.items()} if isinstance(x, dict) else torch.zeros_like(x)


def _rows(x, keep: Tensor):
    return {k: _rows(v, keep) for k, v in x.items()} if isinstance(x, dict) else x[keep]


class MultiInputTransform:
    """{name: transform} (MAIN first) -> subject id -> {"inputs": {name: x_i}, "mask": (N,) bool}."""

    def __init__(self, transforms: Mapping[str, Callable], subject_ids: Sequence[str]):
        if next(iter(transforms), None) != MAIN:
            raise ValueError(f"the first input must be {MAIN!r} (the genomics= option), got {list(transforms)}")
        self.transforms = dict(transforms)
        self.subject_ids = list(subject_ids)  # where a template for a missing input is looked for
        self._templates: dict[str, object] = {}

    @property
    def names(self) -> list[str]:
        return list(self.transforms)

    def _template(self, name: str):
        """Zeros shaped like input `name` of a subject that has it (so batches collate)."""
        if name not in self._templates:
            for sid in self.subject_ids:
                try:
                    self._templates[name] = _zeros_like(self.transforms[name](sid))
                    break
                except KeyError:
                    continue
            else:
                raise ValueError(f"genomics_inputs.{name}: no subject of the cohort has this input")
        return self._templates[name]

    def __call__(self, subject_id: str) -> dict:
        inputs, mask = {}, []
        for name, transform in self.transforms.items():
            try:
                inputs[name], present = transform(subject_id), True
            except KeyError:
                if name == MAIN:
                    raise
                inputs[name], present = self._template(name), False
            mask.append(present)
        return {"inputs": inputs, "mask": torch.tensor(mask)}


class MultiInputEncoder(nn.Module):
    """{name: encoder} -> forward({"inputs", "mask": (B, N)}) -> (B, sum d_i + N): each encoder run on the subjects
    that have its input, zeros for the others, then the mask as 0/1 columns."""

    def __init__(self, encoders: Mapping[str, nn.Module]):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.widths = {name: int(e.output_dim) for name, e in self.encoders.items()}  # name -> d_i
        self.output_dim = sum(self.widths.values()) + len(self.widths)

    @property
    def fitted(self) -> bool | None:
        """None when no input's encoder is fitted on data; else whether all of those are (fusion.encoders)."""
        flags = [bool(e.fitted) for e in self.encoders.values() if getattr(e, "fitted", None) is not None]
        return all(flags) if flags else None

    def fit(self, inputs: Iterable[dict]) -> None:
        """Fit each data-fitted input encoder on the training subjects that have its input."""
        items = list(inputs)
        for i, (name, encoder) in enumerate(self.encoders.items()):
            if hasattr(encoder, "fit") and getattr(encoder, "fitted", True) is False:
                encoder.fit(item["inputs"][name] for item in items if bool(item["mask"][i]))

    def forward(self, x: dict) -> Tensor:
        mask = x["mask"].bool()  # (B, N)
        features = []
        for i, (name, encoder) in enumerate(self.encoders.items()):
            f = mask.new_zeros((mask.shape[0], self.widths[name]), dtype=torch.float32)  # (B, d_i)
            keep = mask[:, i]
            if keep.any():
                f[keep] = encoder(_rows(x["inputs"][name], keep)).float()
            features.append(f)
        return torch.cat([*features, mask.float()], dim=-1)  # (B, sum d_i + N)


class MultiInputHead(nn.Module):
    """(B, sum d_i + N) -> (B, D): input i's head on the subjects that have it, averaged over the inputs present.
    In training, an input present in fewer than two subjects of a batch is left out of that batch (its head's
    BatchNorm needs two rows); the main input is always present."""

    def __init__(self, in_dim: int, heads: Mapping[str, Callable[..., nn.Module]], widths: Mapping[str, int]):
        super().__init__()
        if list(heads) != list(widths):
            raise ValueError(f"heads {list(heads)} and encoder widths {list(widths)} must name the same inputs")
        if in_dim != sum(widths.values()) + len(widths):
            raise ValueError(f"in_dim {in_dim} != sum of input widths {dict(widths)} + {len(widths)} mask columns")
        self.widths = dict(widths)
        self.heads = nn.ModuleDict({name: heads[name](in_dim=d) for name, d in self.widths.items()})
        dims = {name: getattr(h, "output_dim", None) for name, h in self.heads.items()}
        if len(set(dims.values())) != 1:
            raise ValueError(f"every input's head must share one output_dim (model.embed_dim), got {dims}")
        self.output_dim = next(iter(dims.values()))

    def forward(self, x: Tensor) -> Tensor:
        n = len(self.widths)
        parts = torch.split(x[:, :-n], list(self.widths.values()), dim=-1)  # N x (B, d_i)
        mask = x[:, -n:] > 0.5  # (B, N)
        total = x.new_zeros((x.shape[0], self.output_dim))  # (B, D)
        count = x.new_zeros((x.shape[0], 1))
        for i, (name, f) in enumerate(zip(self.widths, parts)):
            keep = mask[:, i]
            if int(keep.sum()) < (2 if self.training else 1):
                continue
            total[keep] += self.heads[name](f[keep])
            count[keep] += 1
        return total / count.clamp(min=1)


class ManifestColumns:
    """A genetic input from manifest columns (polygenic scores, ancestry PCs): subject id -> FloatTensor (C,).
    A subject with an empty value in any of the columns lacks the input (MissingInput)."""

    def __init__(self, columns: Sequence[str], subjects: pd.DataFrame):
        columns = [columns] if isinstance(columns, str) else list(columns)
        unknown = [c for c in columns if c not in subjects.columns]
        if not columns or unknown:
            raise ValueError(
                f"genomics input columns {unknown or columns}: not manifest columns; the manifest has "
                f"{[c for c in subjects.columns if c not in ('subject_id', 'fmri', 'split')]}"
            )
        table = subjects.set_index(subjects["subject_id"].astype(str))[columns]
        bad = [c for c in columns if not pd.api.types.is_numeric_dtype(table[c])]
        if bad:
            raise ValueError(f"genomics input columns {bad} are not numeric (e.g. {table[bad[0]].iloc[0]!r})")
        self.columns = columns
        self._values = {sid: row for sid, row in zip(table.index, table.to_numpy(dtype=np.float32))}

    def encoder_inputs(self) -> dict:
        return {"n_columns": len(self.columns)}

    def __call__(self, subject_id: str) -> Tensor:
        row = self._values.get(subject_id)
        if row is None or np.isnan(row).any():
            raise MissingInput(f"subject {subject_id!r} has no value for {self.columns}")
        return torch.from_numpy(row.copy())  # (C,)


class ColumnFeatures(nn.Module):
    """The encoder of ManifestColumns: the values themselves, (B, C) -> (B, C) (the head standardises them)."""

    def __init__(self, n_columns: int):
        super().__init__()
        self.output_dim = int(n_columns)

    def forward(self, x: Tensor) -> Tensor:
        return x.float()
