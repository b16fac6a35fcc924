"""Linear probes: how much of each manifest covariate an embedding carries, linearly (Alain & Bengio 2016; the linear
evaluation protocol of SimCLR/CLIP). Fit on the training subjects, hyper-parameters chosen by cross-validation on
them only, scored once on the test subjects.

- continuous covariate (age): standardise, then ridge regression with the penalty chosen by efficient leave-one-out
  cross-validation (scikit-learn RidgeCV); score R^2 on test (negative = worse than predicting the training mean).
- categorical covariate (sex, site): standardise, then L2 logistic regression with C chosen by stratified k-fold
  cross-validation on balanced accuracy (the choice GridSearchCV over the pipeline makes, but each fold's scaler and
  rotation fitted once and shared by every C: 6 SVDs of wide raw features per probe, not 36); scores balanced
  accuracy (chance = 1 / n_classes) and ROC AUC (binary; one-vs-rest macro for more classes; NaN when the test
  split lacks a class).
Subjects whose covariate is missing (NaN, or "" for a category) are left out of that probe; test subjects of a class
never seen in training too. A covariate that cannot be probed (fewer than two classes, a class with one training
subject, fewer than 3 training values) is skipped and named in the log.
Names: "probe/<covariate>/<embedding>/<score>" (score r2 | balanced_accuracy | auc). Library code: no Lightning, no
Hydra.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import balanced_accuracy_score, r2_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

log = logging.getLogger(__name__)

RIDGE_ALPHAS = tuple(np.logspace(-3, 5, 17))  # ridge penalties tried (leave-one-out on train)
LOGISTIC_CS = tuple(np.logspace(-4, 2, 7))  # inverse L2 penalties tried (stratified k-fold on train)
MAX_FOLDS = 5  # k of the stratified k-fold (fewer when the rarest training class has fewer subjects)
SOLVER = "newton-cg"  # Hessian-free Newton: fast on small cohorts, no D x D Hessian for wide raw features


def _pipeline(model, x_train: np.ndarray):
    """StandardScaler -> [PCA keeping every component when D > N] -> model. An L2-penalised linear model's weights
    lie in the span of its training rows, so the rotation onto that span changes no prediction, only the cost (N
    columns instead of D: raw FC has 34,716)."""
    n, d = x_train.shape
    rotation = [PCA(n_components=None, svd_solver="full")] if d > n else []  # None: min(N, D) of each fit
    return make_pipeline(StandardScaler(), *rotation, model)


def ridge_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    """x (N, D), y (N,) floats -> {"r2": test R^2}."""
    model = _pipeline(RidgeCV(alphas=RIDGE_ALPHAS), x_train).fit(x_train, y_train)
    return {"r2": float(r2_score(y_test, model.predict(x_test)))}


def logistic_probe(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, seed: int = 0
) -> dict[str, float]:
    """x (N, D), y (N,) labels -> {"balanced_accuracy", "auc"} on test. Raises ValueError when y_train cannot be
    cross-validated (fewer than two classes, or a class with a single subject)."""
    classes, counts = np.unique(y_train, return_counts=True)
    if len(classes) < 2 or counts.min() < 2:
        raise ValueError(
            f"needs two or more classes with two or more training subjects each, got {dict(zip(classes, counts))}"
        )
    folds = StratifiedKFold(n_splits=min(MAX_FOLDS, int(counts.min())), shuffle=True, random_state=seed)
    cv = np.zeros((folds.get_n_splits(), len(LOGISTIC_CS)))  # (folds, Cs) balanced accuracy on the held-out fold
    for k, (tr, te) in enumerate(folds.split(x_train, y_train)):
        rotate = _pipeline(None, x_train[tr])[:-1].fit(x_train[tr])  # scaler [+ rotation] of this fold's rows
        z_tr, z_te = rotate.transform(x_train[tr]), rotate.transform(x_train[te])
        for j, c in enumerate(LOGISTIC_CS):
            fit = LogisticRegression(C=c, solver=SOLVER, max_iter=5000).fit(z_tr, y_train[tr])
            cv[k, j] = balanced_accuracy_score(y_train[te], fit.predict(z_te))
    best = LOGISTIC_CS[int(np.argmax(cv.mean(0)))]  # first best, as GridSearchCV breaks ties
    search = _pipeline(LogisticRegression(C=best, solver=SOLVER, max_iter=5000), x_train).fit(x_train, y_train)
    out = {"balanced_accuracy": float(balanced_accuracy_score(y_test, search.predict(x_test)))}
    proba = search.predict_proba(x_test)  # (N, n_classes), columns in `classes` order
    if len(np.unique(y_test)) < len(classes):
        out["auc"] = float("nan")  # a class absent from test: ROC AUC undefined
    elif len(classes) == 2:
        out["auc"] = float(roc_auc_score(y_test == classes[1], proba[:, 1]))
    else:
        out["auc"] = float(roc_auc_score(y_test, proba, multi_class="ovr", average="macro", labels=classes))
    return out


def _present(values: pd.Series, kind: str) -> np.ndarray:
    """Mask of subjects whose covariate is known."""
    if kind == "continuous":
        return pd.to_numeric(values, errors="coerce").notna().to_numpy().copy()
    return (values.notna() & (values.astype(str) != "")).to_numpy().copy()


def linear_probes(
    train: Mapping[str, np.ndarray],  # embedding name -> (N_train, D) features of the training subjects
    test: Mapping[str, np.ndarray],  # same names -> (N_test, D_same) of the test subjects
    covariates_train: pd.DataFrame,  # (N_train rows, row order = the features') the covariate columns
    covariates_test: pd.DataFrame,  # (N_test rows)
    kinds: Mapping[str, str],  # covariate -> "continuous" | "categorical" (fusion.cohort.Cohort.covariates)
    seed: int = 0,  # seeds the k-fold split of the logistic probes
) -> dict[str, float]:
    """Every covariate x every embedding -> {"probe/<covariate>/<embedding>/<score>": value}."""
    out: dict[str, float] = {}
    for covariate, kind in kinds.items():
        if kind not in ("continuous", "categorical"):
            raise ValueError(f"covariate {covariate!r}: kind must be 'continuous' or 'categorical', got {kind!r}")
        y_tr, y_te = covariates_train[covariate], covariates_test[covariate]
        keep_tr, keep_te = _present(y_tr, kind), _present(y_te, kind)
        if kind == "continuous":
            y_tr, y_te = y_tr.to_numpy(dtype=float)[keep_tr], y_te.to_numpy(dtype=float)[keep_te]
        else:
            y_tr, y_te = y_tr.astype(str).to_numpy()[keep_tr], y_te.astype(str).to_numpy()[keep_te]
            seen = np.isin(y_te, y_tr)
            keep_te[keep_te] = seen  # test subjects of a class never seen in training are left out
            y_te = y_te[seen]
        if len(y_tr) < 3 or len(y_te) < 2:
            log.warning(
                "probe of %r skipped: %d training and %d test subjects have it", covariate, len(y_tr), len(y_te)
            )
            continue
        for name, x_train in train.items():
            x_tr, x_te = (
                np.asarray(x_train, dtype=np.float64)[keep_tr],
                np.asarray(test[name], dtype=np.float64)[keep_te],
            )
            try:
                if kind == "continuous":
                    scores = ridge_probe(x_tr, y_tr, x_te, y_te)
                else:
                    scores = logistic_probe(x_tr, y_tr, x_te, y_te, seed)
            except ValueError as err:
                log.warning("probe of %r skipped: %s", covariate, err)
                break
            out |= {f"probe/{covariate}/{name}/{score}": value for score, value in scores.items()}
    return out
