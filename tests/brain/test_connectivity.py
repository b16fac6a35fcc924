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


def unequal_scans(lengths=(200, 173, 151, 188), p=8, seed=1) -> list[torch.Tensor]:
    """Whole-scan windows of different lengths, (1, T_i, P) each, as ParcelTimeSeries(window=None) returns them."""
    full = coupled_series(n_subjects=len(lengths), t=max(lengths), p=p, seed=seed)
    return [full[i, :, :n] for i, n in enumerate(lengths)]


def test_collate_pads_shorter_scans_with_nan_frames():
    from brain.parcellation import ParcelTimeSeries
    from brain.windows import collate_windows

    scans = unequal_scans()
    assert ParcelTimeSeries.collate is collate_windows  # what the datamodule batches parcel series with
    batch = collate_windows(scans)
    assert batch.shape == (4, 1, 200, 8) and batch.dtype == torch.float32
    for x, row in zip(scans, batch):
        n = x.shape[1]
        assert torch.equal(row[:, :n], x)  # the data untouched, first frames first
        assert torch.isnan(row[:, n:]).all()  # then whole NaN frames up to the batch's longest
    same = [x[:, :150] for x in scans]
    assert torch.equal(collate_windows(same), torch.stack(same))  # equal lengths (fixed windows): a plain stack
    with pytest.raises(ValueError, match="more than their length in time"):
        collate_windows([scans[0], scans[1][..., :5]])


@pytest.mark.parametrize("kind", ["correlation", "tangent"])
@pytest.mark.parametrize("covariance", ["empirical", "ledoit_wolf"])
@pytest.mark.parametrize("fisher_z", [True, False])
def test_padded_batch_equals_each_subjects_unpadded_scan(kind, covariance, fisher_z):
    from brain.windows import collate_windows

    scans = unequal_scans()
    enc = FunctionalConnectivity(8, kind=kind, covariance=covariance, fisher_z=fisher_z)
    padded = collate_windows(scans)
    if kind == "tangent":
        enc.fit([padded])  # a padded batch fits the same reference as the unpadded scans
        ref = FunctionalConnectivity(8, kind=kind, covariance=covariance)
        ref.fit(scans)
        assert torch.allclose(enc.whitening, ref.whitening, atol=1e-10)
    out = enc(padded)
    assert out.shape == (4, 28) and torch.isfinite(out).all()
    for i, x in enumerate(scans):
        assert torch.allclose(out[i], enc(x[None])[0], atol=1e-5), f"subject {i} ({x.shape[1]} frames)"
    cropped = enc(torch.stack([x[:, :151] for x in scans]))  # what cropping to the shortest would give: different
    assert (out[0] - cropped[0]).abs().max() > 1e-3


def test_nan_inside_a_frame_is_an_error_not_padding():
    x = coupled_series(n_subjects=1)
    x[0, 0, 10, 3] = float("nan")
    with pytest.raises(ValueError, match="not padding"):
        FunctionalConnectivity(8)(x)
