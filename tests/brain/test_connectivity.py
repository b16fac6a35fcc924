import numpy as np
import pytest
import torch

from brain.connectivity import FunctionalConnectivity


def coupled_series(n_subjects=6, t=200, p=8, seed=0):
    """Parcels 0 and 1 share a signal; the rest are independent noise. (N, 1, T, P)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_subjects, 1, t, p))
    x[:, 0, :, 1] += 2 * x[:, 0, :, 0]
    return torch.from_numpy(x).float()


def test_empirical_correlation_is_fisher_z_pearson_upper_triangle():
    x = coupled_series()
    enc = FunctionalConnectivity(8, covariance="empirical")
    out = enc(x)
    assert out.shape == (6, 28) and enc.output_dim == 28
    r = np.corrcoef(x[0, 0].numpy().T)
    iu = np.triu_indices(8, 1)
    assert np.allclose(out[0].numpy(), np.arctanh(r[iu]), atol=1e-4)
    assert out[:, 0].min() > 0.8  # parcels 0-1 coupled; the first upper-triangle entry


def test_windows_are_averaged():
    x = coupled_series(n_subjects=2)
    two = torch.cat([x, x.flip(2)], dim=1)  # (B, 2, T, P): the same series twice (time-reversed)
    enc = FunctionalConnectivity(8)
    assert torch.allclose(enc(two), enc(x), atol=1e-5)


def test_tangent_needs_fit_and_centres_the_group():
    x = coupled_series()
    enc = FunctionalConnectivity(8, kind="tangent")
    with pytest.raises(RuntimeError, match="fit"):
        enc(x)
    enc.fit([x[i] for i in range(6)])
    out = enc(x)
    assert out.shape == (6, 28)
    assert out.mean(0).abs().max() < 0.1  # tangent vectors around the geometric mean average near zero
    restored = FunctionalConnectivity(8, kind="tangent")
    restored.load_state_dict(enc.state_dict())  # the whitening travels in checkpoints
    assert torch.allclose(restored(x), out)


def test_wrong_parcel_count_is_a_clear_error():
    with pytest.raises(ValueError, match="8 parcels"):
        FunctionalConnectivity(8)(torch.randn(1, 1, 50, 5))
