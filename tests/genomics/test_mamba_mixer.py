"""genomics.ssm.mamba.Mamba: upstream parameter names, init, and equality with transformers' MambaMixer."""

import pytest
import torch
from transformers import MambaConfig
from transformers.models.mamba.modeling_mamba import MambaMixer

from genomics.ssm import ops
from genomics.ssm.mamba import Mamba


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_parameter_names_and_shapes():
    m = Mamba(256)  # the published Caduceus mixer: d_inner 512, dt_rank 16, d_state 16
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "A_log": (512, 16),
        "D": (512,),
        "in_proj.weight": (1024, 256),
        "conv1d.weight": (512, 1, 4),
        "conv1d.bias": (512,),
        "x_proj.weight": (48, 512),
        "dt_proj.weight": (512, 16),
        "dt_proj.bias": (512,),
        "out_proj.weight": (256, 512),
    }


def test_init_matches_mamba_ssm():
    m = Mamba(32, d_state=8, dt_min=0.001, dt_max=0.1)
    assert torch.equal(m.A_log, torch.log(torch.arange(1, 9).float()).expand(64, 8))
    assert torch.equal(m.D, torch.ones(64))
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001
    assert m.dt_proj.weight.abs().max() <= m.dt_rank**-0.5


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("bias", [False, True])
def test_equals_transformers_mamba_mixer(backend, bias):
    d_model, d_state, rank = 16, 4, 3
    hf_cfg = MambaConfig(
        hidden_size=d_model,
        state_size=d_state,
        expand=2,
        conv_kernel=4,
        time_step_rank=rank,
        use_bias=bias,
        use_conv_bias=True,
        num_hidden_layers=1,
    )
    hf = MambaMixer(hf_cfg, layer_idx=0).eval()
    ours = Mamba(d_model, d_state=d_state, d_conv=4, expand=2, dt_rank=rank, bias=bias, backend=backend)
    _randomize(hf)
    ours.load_state_dict(hf.state_dict(), strict=True)  # same names, same shapes
    x = torch.randn(2, 37, d_model, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = hf(x), ours(x)
    assert got.shape == (2, 37, d_model)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_gradients_flow_to_every_parameter():
    m = Mamba(8, d_state=4, backend="torch")
    m(torch.randn(2, 5, 8)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_forcing_an_unavailable_backend_fails_clearly():
    with pytest.raises(ValueError, match="unknown SSM backend"):
        Mamba(8, backend="tpu")
    with pytest.raises(RuntimeError, match="triton"):  # CPU tensors (outside Triton's interpreter)
        Mamba(8, backend="triton")(torch.randn(1, 3, 8))
    if not ops.cuda_available():
        with pytest.raises(RuntimeError, match="cuda"):
            Mamba(8, backend="cuda")(torch.randn(1, 3, 8))


@pytest.mark.gpu
def test_cuda_kernels_match_the_pure_path():
    if not ops.cuda_available():
        pytest.skip("mamba-ssm is not installed")
    torch.manual_seed(0)
    m = Mamba(64, backend="cuda").cuda()
    x = torch.randn(2, 512, 64, device="cuda")
    with torch.no_grad():
        fast = m(x)
        m.backend = "torch"
        pure = m(x)
    torch.testing.assert_close(fast, pure, rtol=1e-3, atol=1e-3)
