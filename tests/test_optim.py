"""fusion.optim: one weight-decay rule for every loop; fine-tuning Caduceus through fusion spares A_log and D."""

import math

import torch
from torch import nn

from fusion.heads import ProjectionHead
from fusion.model import AlignmentModel
from fusion.optim import cosine_with_warmup, param_groups
from genomics.models import CaduceusGenomicsEncoder, KmerSpectrum


def test_fine_tuning_caduceus_through_fusion_keeps_ssm_parameters_out_of_weight_decay():
    genomics = CaduceusGenomicsEncoder(n_regions=2, config={"d_model": 16, "n_layer": 2, "rcps": True}, freeze=False)
    brain = KmerSpectrum(n_regions=2, k=2)  # any encoder: the rule is about the genomics tower here
    model = AlignmentModel(genomics, brain, ProjectionHead, ProjectionHead)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    spared = {names[id(p)] for p in no_decay["params"]}
    a_logs = [n for n in names.values() if n.endswith("A_log")]
    assert a_logs and all(model.get_parameter(n).ndim == 2 for n in a_logs)  # 2-D: ndim < 2 alone would decay it
    assert set(a_logs) <= spared and {n for n in names.values() if n.endswith(".D")} <= spared
    assert "logit_scale.log_scale" in spared
    assert decay["params"] and all(p.ndim >= 2 for p in decay["params"])  # matrices and conv kernels
    n_params = len({id(p) for p in model.parameters() if p.requires_grad})
    assert len(decay["params"]) + len(no_decay["params"]) == n_params  # each (weight-tied) parameter once


def test_cosine_with_warmup_shape():
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    sched = cosine_with_warmup(opt, total_steps=100, warmup_fraction=0.1, min_lr_ratio=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert math.isclose(lrs[0], 0.1) and math.isclose(lrs[9], 1.0) and max(lrs) == lrs[9]
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and math.isclose(lrs[-1], 0.1, abs_tol=1e-3)
