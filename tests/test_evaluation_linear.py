"""CCA / PLS baselines: equal to scikit-learn run directly, find a planted shared signal, stay at chance without one."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cross_decomposition import CCA, PLSCanonical
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from fusion.evaluation.linear import fit_two_view, linear_baseline


def views(n, shared=3, seed=0, signal=1.0):
    """Genomics-like (N, 60) and brain-like (N, 40) features sharing `shared` latent factors."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, shared))
    a, b = np.random.default_rng(100).normal(size=(shared, 60)), np.random.default_rng(101).normal(size=(shared, 40))
    return signal * z @ a + rng.normal(size=(n, 60)) * 2, signal * z @ b + rng.normal(size=(n, 40)) * 2


def test_cca_equals_scikit_learn_run_directly():
    xg, xb = views(120)
    tg, tb = views(40, seed=1)
    u, v = fit_two_view("cca", xg, xb, n_components=2, n_pcs=10).embed(tg, tb)
    sg, sb = StandardScaler().fit(xg), StandardScaler().fit(xb)
    pg, pb = PCA(10, random_state=0).fit(sg.transform(xg)), PCA(10, random_state=0).fit(sb.transform(xb))
    cca = CCA(2, scale=False, max_iter=2000).fit(pg.transform(sg.transform(xg)), pb.transform(sb.transform(xb)))
    train_u, train_v = cca.transform(pg.transform(sg.transform(xg)), pb.transform(sb.transform(xb)))
    du, dv = cca.transform(pg.transform(sg.transform(tg)), pb.transform(sb.transform(tb)))
    du, dv = du / train_u.std(0), dv / train_v.std(0)
    np.testing.assert_allclose(u, du / np.linalg.norm(du, axis=1, keepdims=True), atol=1e-8)
    np.testing.assert_allclose(v, dv / np.linalg.norm(dv, axis=1, keepdims=True), atol=1e-8)


def test_pls_equals_scikit_learn_run_directly():
    xg, xb = views(80)
    tg, tb = views(30, seed=1)
    u, _ = fit_two_view("pls", xg, xb, n_components=3, n_pcs=None).embed(tg, tb)
    sg, sb = StandardScaler().fit(xg), StandardScaler().fit(xb)
    pls = PLSCanonical(3, scale=False, max_iter=2000).fit(sg.transform(xg), sb.transform(xb))
    du = pls.transform(sg.transform(tg)) / pls.transform(sg.transform(xg)).std(0)
    np.testing.assert_allclose(u, du / np.linalg.norm(du, axis=1, keepdims=True), atol=1e-8)


@pytest.mark.parametrize("method", ["cca", "pls"])
def test_baselines_find_a_shared_signal_and_stay_at_chance_without(method):
    xg, xb = views(150, signal=2.0)
    tg, tb = views(50, seed=1, signal=2.0)
    out = linear_baseline(method, xg, xb, tg, tb, n_resamples=200)
    assert out[f"{method}/g2b/R@1"] > 0.2 and out[f"{method}/b2g/R@10"] > 0.7  # chance: 0.02 and 0.2
    assert out[f"{method}/g2b/R@1_lo"] <= out[f"{method}/g2b/R@1"] <= out[f"{method}/g2b/R@1_hi"]
    assert out[f"{method}/n_components"] >= 2  # three shared factors
    null = linear_baseline(method, xg, np.random.default_rng(7).normal(size=xb.shape), tg, tb, n_resamples=0)
    assert null[f"{method}/g2b/R@10"] < 0.45 and null[f"{method}/b2g/mean_rank"] > 15  # chance: 0.2, 25.5


def test_bad_inputs_are_refused():
    xg, xb = views(10)
    with pytest.raises(ValueError, match="pair row by row"):
        linear_baseline("cca", xg, xb[:9], xg, xb)
    with pytest.raises(ValueError, match="4 or more"):
        linear_baseline("pls", xg[:3], xb[:3], xg, xb)
    with pytest.raises(ValueError, match="one of"):
        fit_two_view("ica", xg, xb, 2, 2)


@pytest.mark.parametrize("method", ["cca", "pls"])
def test_first_components_of_a_larger_fit_are_the_smaller_fit(method):
    xg, xb = views(90)
    tg, tb = views(30, seed=1)
    big = fit_two_view(method, xg, xb, n_components=6, n_pcs=12).embed(tg, tb, k=3)
    small = fit_two_view(method, xg, xb, n_components=3, n_pcs=12).embed(tg, tb)
    np.testing.assert_allclose(big[0], small[0], atol=1e-6)
    np.testing.assert_allclose(big[1], small[1], atol=1e-6)


def test_pls_on_more_features_than_subjects_equals_pls_on_the_raw_features():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(40, 2))
    xg = z @ rng.normal(size=(2, 300)) + rng.normal(size=(40, 300))  # d = 300 > N = 40: rotated onto the span
    xb = z @ rng.normal(size=(2, 20)) + rng.normal(size=(40, 20))
    tg, tb = rng.normal(size=(10, 300)), rng.normal(size=(10, 20))
    u, v = fit_two_view("pls", xg, xb, n_components=2, n_pcs=None).embed(tg, tb)
    sg, sb = StandardScaler().fit(xg), StandardScaler().fit(xb)
    pls = PLSCanonical(2, scale=False, max_iter=2000).fit(sg.transform(xg), sb.transform(xb))
    du, dv = pls.transform(sg.transform(tg), sb.transform(tb))
    train_u, train_v = pls.transform(sg.transform(xg), sb.transform(xb))
    du, dv = du / train_u.std(0), dv / train_v.std(0)
    np.testing.assert_allclose(np.abs(u), np.abs(du / np.linalg.norm(du, axis=1, keepdims=True)), atol=1e-6)
    np.testing.assert_allclose(np.abs(v), np.abs(dv / np.linalg.norm(dv, axis=1, keepdims=True)), atol=1e-6)
