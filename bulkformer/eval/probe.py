"""Classification on frozen embeddings (linear probe) and the baselines every score is shown with.

One protocol for every method: the same folds (stratified K-fold, or a given train/test split),
the same metrics (weighted F1, macro F1, accuracy, averaged over folds, ± std; a confusion
matrix of the pooled out-of-fold predictions). Methods:

``linear_probe``     standardize → logistic regression on the BulkFormer sample embeddings
``logreg_log1p_tpm`` standardize → logistic regression on the z-scored log1p(TPM) input genes
``pca50_logreg``     standardize → PCA(50) → logistic regression on the same genes
``rf_*``             BulkFormer's own protocol: standardize → PCA(50) → random forest
                     (:func:`random_forest`), on the embeddings (``rf_bulkformer``) or on the
                     genes (``rf_log1p_tpm``)

Everything preprocessing-like (scaler, PCA) is fit on the training fold only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = [
    "ClassificationResult",
    "make_folds",
    "check_labels",
    "cross_validate",
    "linear_probe",
    "probe_classifier",
    "baselines",
    "random_forest",
    "probe",
    "results_table",
    "METRICS",
]

log = logging.getLogger(__name__)

METRICS = ("f1_weighted", "f1_macro", "accuracy")


@dataclass
class ClassificationResult:
    """Scores of one method under one protocol.

    ``metrics``: mean and std over folds of each of :data:`METRICS` (keys ``f1_weighted``,
    ``f1_weighted_std``, …); ``per_fold``: one row per fold; ``confusion``: classes × classes
    counts (rows true, columns predicted) of the pooled out-of-fold predictions;
    ``predictions``: (N,) predicted label per sample (``None`` where not in any test fold).
    """

    method: str
    metrics: dict
    per_fold: pd.DataFrame
    confusion: pd.DataFrame
    predictions: np.ndarray
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def refuse_missing_labels(labels, where: str = "the labels", names=None) -> None:
    """ValueError when a label is missing (NaN, None or empty): such samples are refused, not
    turned into a class ``'nan'``; the message counts them and names a few (``names``)."""
    s = pd.Series(np.asarray(labels, dtype=object))
    missing = s.isna().to_numpy() | (s.astype(str).str.strip() == "").to_numpy()
    if missing.any():
        idx = np.flatnonzero(missing)
        ids = idx if names is None else np.asarray(names, dtype=object)[idx]
        raise ValueError(
            f"{len(idx)} of {len(s)} samples have no label (NaN, None or empty) in {where}, "
            f"e.g. {', '.join(map(str, ids[:5]))}: drop them from the input or label them"
        )


def check_labels(labels, n_splits: int | None) -> np.ndarray:
    """Labels as a string array; ValueError for missing labels, a single class or classes
    smaller than K."""
    refuse_missing_labels(labels)
    y = np.asarray(pd.Series(labels).astype(str).to_numpy(), dtype=object)
    if len(y) == 0:
        raise ValueError("no labels: nothing to classify")
    counts = pd.Series(y).value_counts()
    if len(counts) < 2:
        raise ValueError(
            f"labels have a single class ({counts.index[0]!r}, {counts.iloc[0]} samples): "
            "classification needs at least two"
        )
    if n_splits is not None and counts.min() < n_splits:
        small = counts[counts < n_splits]
        desc = ", ".join(f"{k!r} ({v})" for k, v in small.head(5).items())
        raise ValueError(
            f"{len(small)} class(es) have fewer samples than the {n_splits} folds: {desc}. "
            f"Use fewer folds (--folds {max(2, int(counts.min()))}) or drop the small classes"
        )
    return y


def make_folds(
    labels,
    *,
    n_splits: int = 5,
    seed: int = 0,
    split=None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Train/test index pairs: stratified K-fold, or the one given split.

    Parameters
    ----------
    labels : (N,) class labels.
    n_splits : K of the stratified K-fold (shuffled with ``seed``).
    split : (N,) array of ``"train"`` / ``"test"`` (other values, e.g. ``"val"``, are left
        out), or a ``(train_idx, test_idx)`` pair; replaces the K-fold.
    """
    from sklearn.model_selection import StratifiedKFold

    if split is not None:
        y = check_labels(labels, None)
        if isinstance(split, tuple) and len(split) == 2:
            tr, te = (np.asarray(s, dtype=np.int64) for s in split)
        else:
            s = np.asarray(split).astype(str)
            if s.shape != y.shape:
                raise ValueError(f"split has shape {s.shape}, labels {y.shape}")
            tr, te = np.flatnonzero(s == "train"), np.flatnonzero(s == "test")
        if len(tr) == 0 or len(te) == 0:
            raise ValueError("split: need at least one train and one test sample")
        if len(set(y[tr])) < 2:
            raise ValueError("split: the training part has a single class")
        return [(tr, te)]
    y = check_labels(labels, n_splits)
    if n_splits < 2:
        raise ValueError(f"n_splits = {n_splits}: need at least 2 folds")
    skf = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in skf.split(np.zeros(len(y)), y)]


def _scores(y_true, y_pred) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "f1_weighted": f1_score(y_true, y_pred, average="weighted", zero_division=0),
        "f1_macro": f1_score(y_true, y_pred, average="macro", zero_division=0),
        "accuracy": accuracy_score(y_true, y_pred),
    }


def cross_validate(
    method: str,
    fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
    labels,
    folds,
) -> ClassificationResult:
    """Run ``fit_predict(train_idx, test_idx) -> predicted labels of test_idx`` on every fold.

    The single place where scores are computed, for the probe, fine-tuning and baselines alike.
    """
    from sklearn.metrics import confusion_matrix

    y = np.asarray(pd.Series(labels).astype(str).to_numpy(), dtype=object)
    classes = np.array(sorted(set(y)), dtype=object)
    pred = np.full(len(y), None, dtype=object)
    rows = []
    t0 = time.perf_counter()
    for k, (tr, te) in enumerate(folds):
        p = np.asarray(fit_predict(np.asarray(tr), np.asarray(te))).astype(str)
        pred[te] = p
        rows.append({"fold": k, "n_train": len(tr), "n_test": len(te), **_scores(y[te], p)})
    seconds = time.perf_counter() - t0
    per_fold = pd.DataFrame(rows)
    metrics = {}
    for m in METRICS:
        metrics[m] = float(per_fold[m].mean())
        metrics[m + "_std"] = float(per_fold[m].std(ddof=0))
    done = pred != None  # noqa: E711 (elementwise)
    cm = confusion_matrix(y[done].astype(str), pred[done].astype(str), labels=classes.astype(str))
    conf = pd.DataFrame(cm, index=pd.Index(classes, name="true"), columns=classes)
    log.info(
        "%s: weighted F1 %.3f ± %.3f", method, metrics["f1_weighted"], metrics["f1_weighted_std"]
    )
    return ClassificationResult(method, metrics, per_fold, conf, pred, seconds)


def _logreg(seed: int, max_iter: int = 2000):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=max_iter, random_state=seed)


def probe_classifier(seed: int = 0):
    """The linear probe's classifier: standardize → logistic regression (unfitted sklearn
    pipeline; also the head fine-tuning starts from)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), _logreg(seed))


def _sk_fit_predict(make_pipeline: Callable, X: np.ndarray, y: np.ndarray):
    def fit_predict(tr, te):
        est = make_pipeline(len(tr))
        est.fit(X[tr], y[tr])
        return est.predict(X[te])

    return fit_predict


def linear_probe(
    embeddings: np.ndarray, labels, folds, *, seed: int = 0, method: str = "linear_probe"
) -> ClassificationResult:
    """Standardize → logistic regression on frozen (N, D) embeddings, on every fold."""
    y = check_labels(labels, None)
    X = np.asarray(embeddings, dtype=np.float64)
    if X.shape[0] != len(y):
        raise ValueError(f"embeddings have {X.shape[0]} rows but there are {len(y)} labels")
    return cross_validate(
        method,
        _sk_fit_predict(lambda n: probe_classifier(seed), X, y),
        y,
        folds,
    )


def baselines(
    z: np.ndarray, labels, folds, *, seed: int = 0, n_components: int = 50
) -> list[ClassificationResult]:
    """The two baselines on the (N, G) z-scored log1p(TPM) matrix, on the same folds.

    Genes constant over all samples (e.g. absent from the input) are dropped first.
    """
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = check_labels(labels, None)
    X = np.asarray(z, dtype=np.float32)
    X = X[:, X.std(axis=0) > 0]

    def pca_pipe(n_train):
        k = max(1, min(n_components, n_train - 1, X.shape[1]))
        return make_pipeline(StandardScaler(), PCA(k, random_state=seed), _logreg(seed))

    return [
        cross_validate(
            "logreg_log1p_tpm",
            _sk_fit_predict(lambda n: make_pipeline(StandardScaler(), _logreg(seed)), X, y),
            y,
            folds,
        ),
        cross_validate(f"pca{n_components}_logreg", _sk_fit_predict(pca_pipe, X, y), y, folds),
    ]


def random_forest(
    features: np.ndarray,
    labels,
    folds,
    *,
    method: str = "rf_bulkformer",
    n_components: int | None = 50,
    n_estimators: int = 500,
    seed: int = 0,
    n_jobs: int | None = None,
) -> ClassificationResult:
    """BulkFormer's classification protocol: standardize → PCA → random forest, on every fold.

    Parameters
    ----------
    features : (N, F) frozen features (sample embeddings, or z-scored genes).
    n_components : PCA width, capped by the training-fold size and F (``None``: no PCA, the
        forest sees the standardized features directly). Scaler and PCA are fit on the
        training fold only.
    n_estimators, n_jobs : of :class:`sklearn.ensemble.RandomForestClassifier` (seeded).
    """
    from sklearn.decomposition import PCA
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = check_labels(labels, None)
    X = np.asarray(features, dtype=np.float32)
    if X.shape[0] != len(y):
        raise ValueError(f"features have {X.shape[0]} rows but there are {len(y)} labels")
    X = X[:, X.std(axis=0) > 0]

    def pipe(n_train):
        steps = [StandardScaler()]
        if n_components is not None:
            steps.append(PCA(max(1, min(n_components, n_train - 1, X.shape[1])), random_state=seed))
        rf = RandomForestClassifier(n_estimators=n_estimators, random_state=seed, n_jobs=n_jobs)
        return make_pipeline(*steps, rf)

    res = cross_validate(method, _sk_fit_predict(pipe, X, y), y, folds)
    res.extra = {"n_components": n_components, "n_estimators": n_estimators}
    return res


def results_table(results: list[ClassificationResult]) -> pd.DataFrame:
    """One row per method: mean and std of every metric, and the seconds it took."""
    rows = [{"method": r.method, **r.metrics, "seconds": round(r.seconds, 3)} for r in results]
    return pd.DataFrame(rows).set_index("method")


def probe(
    data,
    pretrained,
    labels,
    *,
    values: str = "counts",
    gene_ids=None,
    layer: str | None = None,
    gene_column: str | None = None,
    min_gene_overlap: float = 0.5,
    how: str | None = None,
    n_splits: int = 5,
    split=None,
    seed: int = 0,
    batch_size: int = 16,
    device=None,
    with_baselines: bool = True,
    progress: bool = True,
) -> list[ClassificationResult]:
    """Linear probe of a checkpoint's embeddings, and the baselines, on the same folds.

    Parameters
    ----------
    data, pretrained, values, gene_ids, layer, gene_column, min_gene_overlap, how, batch_size,
    device : as :func:`bulkformer.eval.embed`.
    labels : (N,) labels, or the name of an ``obs`` column (AnnData) / ``"label"`` (corpus).
        A sample without a label (NaN, None, empty) is refused (ValueError counting and naming
        them), never made a class ``'nan'``: drop such samples from the input first.
    n_splits, split, seed : :func:`make_folds`.

    Returns
    -------
    [linear probe, logistic regression on z-scored log1p TPM, PCA(50) + logistic regression].
    """
    from .embed import prepare_input, resolve_pretrained, run_model

    pre = resolve_pretrained(pretrained)
    prep = prepare_input(
        data,
        pre,
        values=values,
        gene_ids=gene_ids,
        layer=layer,
        gene_column=gene_column,
        min_gene_overlap=min_gene_overlap,
    )
    y = labels_of(prep, labels)
    folds = make_folds(y, n_splits=n_splits, seed=seed, split=split)
    emb, _ = run_model(
        prep, pre.model, how=how, batch_size=batch_size, device=device, progress=progress
    )
    out = [linear_probe(emb, y, folds, seed=seed)]
    if with_baselines:
        out += baselines(prep.z(), y, folds, seed=seed)
    return out


def labels_of(prep, labels) -> np.ndarray:
    """Labels given directly, or looked up by column name in the input's sample table."""
    if isinstance(labels, str):
        obs = prep.obs
        if labels not in obs.columns:
            raise ValueError(
                f"no label column {labels!r} in the samples; available: "
                f"{', '.join(map(str, obs.columns)) or '(none)'}"
            )
        refuse_missing_labels(obs[labels].to_numpy(), f"column {labels!r}", obs.index)
        return obs[labels].astype(str).to_numpy(dtype=object)
    y = np.asarray(labels, dtype=object)
    if len(y) != prep.n_obs:
        raise ValueError(f"{len(y)} labels for {prep.n_obs} samples")
    refuse_missing_labels(y)
    return y
