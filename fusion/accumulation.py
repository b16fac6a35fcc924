"""Feature-cached gradient accumulation (open_clip's `--accum-freq`; the same idea as Gao et al. 2021, GradCache):
a contrastive batch of N pairs trained in K micro-batches with the gradients of the N-pair loss, so every sample of the
K micro-batches is a negative for every other while only one micro-batch's activations are held at a time.

    1. no-grad pass: embed each micro-batch k -> cached (z_g^k, z_b^k), each (N_k, D); its random state is kept
    2. for k = 1..K: re-embed micro-batch k with gradients under the same random state (dropout masks equal the cached
       pass's), loss(cat(cached[<k], live_k, cached[>k])) over all N pairs, backward
The features' value is the same in every step, so step k's backward gives exactly the N-pair loss's gradient through
micro-batch k's features; summed over k that is the full gradient. Parameters the loss uses directly (temperature,
SigLIP bias: `shared`) would collect the same gradient K times: each step scales theirs by 1/K. Training-mode
BatchNorm normalises with micro-batch statistics (as open_clip); with cumulative running statistics (momentum=None,
fusion.heads) seeing each micro-batch twice leaves them unchanged. Library code: no Lightning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn


def split_batch(batch, k: int) -> list:
    """A batch (a Tensor, or dicts / lists / tuples of them, first dimension N) -> k micro-batches of near-equal size
    (torch.tensor_split); non-tensor leaves are shared."""
    if isinstance(batch, Tensor):
        if batch.shape[0] < k:
            raise ValueError(f"a batch of {batch.shape[0]} cannot be split into model.accum_freq={k} micro-batches")
        return list(torch.tensor_split(batch, k))
    if isinstance(batch, Mapping):
        parts = {key: split_batch(value, k) for key, value in batch.items()}
        return [{key: value[i] for key, value in parts.items()} for i in range(k)]
    if isinstance(batch, (list, tuple)):
        parts = [split_batch(value, k) for value in batch]
        return [type(batch)(p[i] for p in parts) for i in range(k)]
    return [batch] * k


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def accumulate_gradients(
    micro_batches: Sequence,  # K micro-batches, each what `embed` takes
    embed: Callable[..., tuple[Tensor, Tensor]],  # micro-batch -> (z_g (N_k, D), z_b (N_k, D))
    loss: Callable[[Tensor, Tensor], Tensor],  # (z_g (N, D), z_b (N, D)) -> scalar: the objective of the whole batch
    shared: Iterable[nn.Parameter] = (),  # parameters the loss reads directly (e.g. the temperature): grad counted once
    backward: Callable[[Tensor], None] = Tensor.backward,  # e.g. LightningModule.manual_backward
    device: torch.device | None = None,  # where the model's random numbers are drawn (dropout); None = CPU only
) -> Tensor:
    """Accumulate into .grad the gradient of loss over all micro-batches together; returns that loss (detached)."""
    device = device or torch.device("cpu")
    k = len(micro_batches)
    states, cached = [], []
    with torch.no_grad():
        for micro in micro_batches:
            states.append(_rng_state(device))
            cached.append(tuple(z.detach() for z in embed(micro)))  # ((N_k, D), (N_k, D))
    after = _rng_state(device)
    shared = [p for p in shared if p.requires_grad]
    hooks = [p.register_hook(lambda g: g / k) for p in shared] if k > 1 else []
    try:
        value = None
        for i, micro in enumerate(micro_batches):
            _set_rng_state(states[i], device)
            live = embed(micro)
            z = [torch.cat([c[m] for c in cached[:i]] + [live[m]] + [c[m] for c in cached[i + 1 :]]) for m in (0, 1)]
            step_loss = loss(z[0], z[1])  # (N, D), (N, D) -> scalar; the same value in every step
            backward(step_loss)
            value = step_loss.detach() if value is None else value
    finally:
        for hook in hooks:
            hook.remove()
        _set_rng_state(after, device)  # as after one pass over the batch
    return value
