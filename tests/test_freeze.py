"""One freeze rule (genomics.freeze), one name (`freeze`): the Caduceus encoder and the brain encoders' base follow it,
and fusion's towers read the encoder's own flag. A frozen encoder stays in eval mode after model.train() and gets no
gradients; a trainable one does; the heads always train."""

import pytest
import torch
from torch import nn

from brain.models.common import WindowAveragingEncoder
from fusion.heads import ProjectionHead
from fusion.losses import ClipLoss
from fusion.model import AlignmentModel, Tower
from genomics.freeze import Freezable
from genomics.models import CaduceusGenomicsEncoder, KmerSpectrum

TINY = {"d_model": 8, "n_layer": 1, "rcps": True}


class WindowMLP(WindowAveragingEncoder):
    """A brain encoder over (B, W, 6) windows whose backbone has dropout: train/eval mode shows in its outputs."""

    window_ndim = 1

    def __init__(self, freeze: bool):
        torch.manual_seed(0)
        super().__init__(nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.5), nn.Linear(16, 5)), 5, freeze=freeze)

    def embed(self, x):
        return self.backbone(x)


def build(freeze_genomics: bool, freeze_brain: bool, projector: bool = False) -> AlignmentModel:
    genomics = CaduceusGenomicsEncoder(n_regions=2, config=TINY, freeze=freeze_genomics, projector=projector)
    return AlignmentModel(genomics, WindowMLP(freeze_brain), ProjectionHead, ProjectionHead).train()


def step(model: AlignmentModel) -> None:
    torch.manual_seed(1)
    ids, x = torch.randint(7, 11, (4, 2, 2, 24)), torch.randn(4, 3, 6)
    z = model(ids, x)
    ClipLoss()(z["genomics"], z["brain"], model.logit_scale()).backward()


def grads(module: nn.Module) -> list:
    return [p.grad for p in module.parameters()]


@pytest.mark.parametrize("projector", [False, True])
def test_frozen_encoders_stay_in_eval_mode_and_get_no_gradients(projector):
    model = build(freeze_genomics=True, freeze_brain=True, projector=projector)
    model.train()  # as Lightning does at the start of every training epoch
    for tower in (model.genomics, model.brain):
        assert tower.frozen and tower.encoder.freeze
        assert not any(m.training for m in tower.encoder.modules())  # the whole encoder, projector included
        assert not any(p.requires_grad for p in tower.encoder.parameters())
        assert all(m.training for m in tower.head.modules())  # the head trains
    step(model)
    for tower in (model.genomics, model.brain):
        assert all(g is None for g in grads(tower.encoder))
        assert all(g is not None for g in grads(tower.head))
    x = torch.randn(2, 3, 6)
    assert torch.equal(model.brain.encoder(x), model.brain.encoder(x))  # dropout off: eval mode
    with torch.enable_grad():
        assert not model.brain.encoder(x).requires_grad  # no autograd graph is built


def test_trainable_encoders_get_gradients_and_train_mode():
    model = build(freeze_genomics=False, freeze_brain=False)
    for tower in (model.genomics, model.brain):
        assert not tower.frozen and tower.encoder.training
    step(model)
    assert model.genomics.encoder.embedder.backbone.backbone.layers[0].norm.weight.grad is not None
    assert all(g is not None for g in grads(model.brain.encoder))
    x = torch.randn(2, 3, 6)
    assert not torch.equal(model.brain.encoder(x), model.brain.encoder(x))  # dropout on: train mode


def test_the_tower_reads_the_encoders_own_flag():
    assert not Tower(KmerSpectrum(n_regions=2, k=2), nn.Identity()).frozen  # no `freeze` attribute: trainable

    class Impostor(nn.Linear):  # says frozen but does not follow the rule
        freeze = True
        output_dim = 2

    with pytest.raises(TypeError, match="Freezable"):
        Tower(Impostor(2, 2), nn.Identity())
    assert issubclass(CaduceusGenomicsEncoder, Freezable) and issubclass(WindowAveragingEncoder, Freezable)


def test_freezable_keeps_the_callers_grad_mode_when_trainable():
    enc = WindowMLP(freeze=False)
    with torch.no_grad():
        assert not enc(torch.randn(1, 2, 6)).requires_grad  # an outer no_grad is respected
    assert enc(torch.randn(1, 2, 6)).requires_grad
