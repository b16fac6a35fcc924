"""Linear probes against scikit-learn run directly (hand-written cross-validation loops), and on planted covariates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score, mean_squared_error, r2_score, roc_auc_score
from sklearn.model_selection import LeaveOneOut, StratifiedKFold
from sklearn.preprocessing import StandardScaler

from fusion.evaluation.probes import LOGISTIC_CS, RIDGE_ALPHAS, SOLVER, linear_probes

KINDS = {"age": "continuous", "sex": "categorical", "site": "categorical"}


def cohort(n, seed):
    """Features (N, 6): age is linear in column 0, sex the sign of column 1, site random (unrelated)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    covariates = pd.DataFrame(
        {
            "age": 50 + 10 * x[:, 0] + rng.normal(scale=3, size=n),
            "sex": np.where(x[:, 1] + rng.normal(scale=0.5, size=n) > 0, "F", "M"),
            "site": rng.choice(["a", "b", "c"], n),
        }
    )
    return x, covariates


def direct_ridge_r2(x_tr, y_tr, x_te, y_te):
    scaler = StandardScaler().fit(x_tr)
    s_tr, s_te = scaler.transform(x_tr), scaler.transform(x_te)
    loo = []
    for alpha in RIDGE_ALPHAS:
        errors = [
            mean_squared_error(y_tr[te], Ridge(alpha=alpha).fit(s_tr[tr], y_tr[tr]).predict(s_tr[te]))
            for tr, te in LeaveOneOut().split(s_tr)
        ]
        loo.append(np.mean(errors))
    best = RIDGE_ALPHAS[int(np.argmin(loo))]
    return r2_score(y_te, Ridge(alpha=best).fit(s_tr, y_tr).predict(s_te))


def direct_logistic(x_tr, y_tr, x_te, y_te, seed=0):
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    cv = []
    for c in LOGISTIC_CS:
        scores = []
        for tr, te in folds.split(x_tr, y_tr):
            scaler = StandardScaler().fit(x_tr[tr])
            model = LogisticRegression(C=c, solver=SOLVER, max_iter=5000).fit(scaler.transform(x_tr[tr]), y_tr[tr])
            scores.append(balanced_accuracy_score(y_tr[te], model.predict(scaler.transform(x_tr[te]))))
        cv.append(np.mean(scores))
    best = LOGISTIC_CS[int(np.argmax(cv))]
    scaler = StandardScaler().fit(x_tr)
    model = LogisticRegression(C=best, solver=SOLVER, max_iter=5000).fit(scaler.transform(x_tr), y_tr)
    proba = model.predict_proba(scaler.transform(x_te))
    return balanced_accuracy_score(y_te, model.predict(scaler.transform(x_te))), proba


def test_probes_equal_scikit_learn_run_directly():
    x_tr, cov_tr = cohort(60, 0)
    x_te, cov_te = cohort(40, 1)
    out = linear_probes({"brain": x_tr}, {"brain": x_te}, cov_tr, cov_te, KINDS)
    r2 = direct_ridge_r2(x_tr, cov_tr["age"].to_numpy(), x_te, cov_te["age"].to_numpy())
    assert out["probe/age/brain/r2"] == pytest.approx(r2, rel=1e-6)
    bal, proba = direct_logistic(x_tr, cov_tr["sex"].to_numpy(), x_te, cov_te["sex"].to_numpy())
    assert out["probe/sex/brain/balanced_accuracy"] == pytest.approx(bal)
    assert out["probe/sex/brain/auc"] == pytest.approx(roc_auc_score(cov_te["sex"] == "M", proba[:, 1]))
    bal, proba = direct_logistic(x_tr, cov_tr["site"].to_numpy(), x_te, cov_te["site"].to_numpy())
    assert out["probe/site/brain/balanced_accuracy"] == pytest.approx(bal)
    auc = roc_auc_score(cov_te["site"], proba, multi_class="ovr", average="macro")
    assert out["probe/site/brain/auc"] == pytest.approx(auc)


def test_planted_covariates_are_found_and_unrelated_ones_are_chance():
    x_tr, cov_tr = cohort(200, 2)
    x_te, cov_te = cohort(100, 3)
    noise_tr, noise_te = np.random.default_rng(4).normal(size=(200, 6)), np.random.default_rng(5).normal(size=(100, 6))
    out = linear_probes({"fused": x_tr, "noise": noise_tr}, {"fused": x_te, "noise": noise_te}, cov_tr, cov_te, KINDS)
    assert out["probe/age/fused/r2"] > 0.8 and out["probe/age/noise/r2"] < 0.1
    assert out["probe/sex/fused/auc"] > 0.8 and 0.3 < out["probe/sex/noise/auc"] < 0.7
    assert 0.15 < out["probe/site/fused/balanced_accuracy"] < 0.55  # 3 random sites: chance 1/3


def test_missing_values_and_unseen_classes_are_left_out():
    x_tr, cov_tr = cohort(80, 6)
    x_te, cov_te = cohort(40, 7)
    cov_tr.loc[:9, "age"] = np.nan
    cov_te.loc[:4, "sex"] = ""
    cov_te.loc[5:7, "site"] = "z"  # a site absent from training
    out = linear_probes({"g": x_tr}, {"g": x_te}, cov_tr, cov_te, KINDS)
    r2 = direct_ridge_r2(x_tr[10:], cov_tr["age"].to_numpy()[10:], x_te, cov_te["age"].to_numpy())
    assert out["probe/age/g/r2"] == pytest.approx(r2, rel=1e-6)
    keep = np.arange(40) >= 5
    bal, _ = direct_logistic(x_tr, cov_tr["sex"].to_numpy(), x_te[keep], cov_te["sex"].to_numpy()[keep])
    assert out["probe/sex/g/balanced_accuracy"] == pytest.approx(bal)
    assert np.isfinite(out["probe/site/g/balanced_accuracy"])


def test_unprobeable_covariates_are_skipped(caplog):
    x_tr, cov_tr = cohort(30, 8)
    x_te, cov_te = cohort(10, 9)
    cov_tr["family"], cov_te["family"] = [f"f{i}" for i in range(30)], [f"f{i}" for i in range(10)]
    cov_tr["one"], cov_te["one"] = "x", "x"
    out = linear_probes({"g": x_tr}, {"g": x_te}, cov_tr, cov_te, {"family": "categorical", "one": "categorical"})
    assert out == {} and "family" in caplog.text and "one" in caplog.text
    with pytest.raises(ValueError, match="kind"):
        linear_probes({"g": x_tr}, {"g": x_te}, cov_tr, cov_te, {"age": "ordinal"})


def test_wide_features_give_the_predictions_of_the_unrotated_probe():
    # D = 400 > N = 50: the probe rotates onto the training span (PCA); ridge predictions are unchanged
    rng = np.random.default_rng(10)
    x_tr, x_te = rng.normal(size=(50, 400)), rng.normal(size=(20, 400))
    cov_tr = pd.DataFrame({"age": x_tr[:, :5].sum(1) + rng.normal(size=50)})
    cov_te = pd.DataFrame({"age": x_te[:, :5].sum(1) + rng.normal(size=20)})
    out = linear_probes({"brain": x_tr}, {"brain": x_te}, cov_tr, cov_te, {"age": "continuous"})
    r2 = direct_ridge_r2(x_tr, cov_tr["age"].to_numpy(), x_te, cov_te["age"].to_numpy())
    assert out["probe/age/brain/r2"] == pytest.approx(r2, abs=1e-6)
