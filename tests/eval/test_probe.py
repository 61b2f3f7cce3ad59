"""Probe protocol: folds, metrics against sklearn computed directly, baselines, bad labels."""

import types

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bulkformer.eval import baselines, linear_probe, make_folds, probe
from bulkformer.eval.probe import labels_of, results_table


def _toy(seed=0, n=60, d=7):
    r = np.random.default_rng(seed)
    y = np.array(["a", "b", "c"] * (n // 3), dtype=object)
    X = r.normal(size=(n, d)) + (y == "b")[:, None] * 0.8 - (y == "c")[:, None] * 0.8
    return X, y


def test_metrics_equal_sklearn_direct():
    X, y = _toy()
    folds = make_folds(y, n_splits=4, seed=3)
    res = linear_probe(X, y, folds, seed=0)
    skf = StratifiedKFold(4, shuffle=True, random_state=3)
    f1w, f1m, acc, pred = [], [], [], np.empty(len(y), dtype=object)
    for tr, te in skf.split(X, y):
        est = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=0))
        p = est.fit(X[tr], y[tr]).predict(X[te])
        pred[te] = p
        f1w.append(f1_score(y[te], p, average="weighted"))
        f1m.append(f1_score(y[te], p, average="macro"))
        acc.append(accuracy_score(y[te], p))
    assert res.metrics["f1_weighted"] == pytest.approx(np.mean(f1w))
    assert res.metrics["f1_weighted_std"] == pytest.approx(np.std(f1w))
    assert res.metrics["f1_macro"] == pytest.approx(np.mean(f1m))
    assert res.metrics["accuracy"] == pytest.approx(np.mean(acc))
    np.testing.assert_array_equal(res.confusion.to_numpy(), confusion_matrix(y, pred.astype(str)))
    assert list(res.confusion.index) == ["a", "b", "c"]
    assert res.per_fold["n_test"].sum() == len(y)


def test_baselines_same_folds_and_table():
    X, y = _toy(n=90, d=80)
    folds = make_folds(y, n_splits=3)
    res = [linear_probe(X[:, :5], y, folds)] + baselines(X, y, folds)
    t = results_table(res)
    assert list(t.index) == ["linear_probe", "logreg_log1p_tpm", "pca50_logreg"]
    for r in res:
        assert r.confusion.to_numpy().sum() == len(y)
        assert r.per_fold["n_test"].tolist() == [len(te) for _, te in folds]
    assert (t["f1_weighted"] > 0.5).all()


def test_given_split():
    X, y = _toy()
    split = np.array(["train"] * 40 + ["val"] * 5 + ["test"] * 15)
    folds = make_folds(y, split=split)
    assert len(folds) == 1 and len(folds[0][0]) == 40 and len(folds[0][1]) == 15
    res = linear_probe(X, y, folds)
    assert res.per_fold["n_test"].tolist() == [15]


def test_bad_labels():
    with pytest.raises(ValueError, match="single class"):
        make_folds(["x"] * 10)
    y = ["a"] * 10 + ["b"] * 3
    with pytest.raises(ValueError, match=r"fewer samples than the 5 folds: 'b' \(3\).*--folds 3"):
        make_folds(y, n_splits=5)
    assert len(make_folds(y, n_splits=3)) == 3


def test_missing_labels_are_refused_not_made_a_class():
    X = np.random.default_rng(0).normal(size=(30, 4))
    y = np.array(["a", "b"] * 15, dtype=object)
    y[[3, 8]] = np.nan
    y[5] = None
    for call in (lambda: make_folds(y, n_splits=3), lambda: linear_probe(X, y, [])):
        with pytest.raises(ValueError, match=r"3 of 30 samples have no label.*e\.g\. 3, 5, 8"):
            call()
    with pytest.raises(ValueError, match="1 of 3 samples have no label"):
        make_folds(["a", " ", "b"])
    obs = pd.DataFrame({"tissue": ["a", np.nan, "b", "a"]}, index=["s1", "s2", "s3", "s4"])
    prep = types.SimpleNamespace(obs=obs, n_obs=4)
    with pytest.raises(ValueError, match=r"1 of 4 samples have no label.*column 'tissue'.*s2"):
        labels_of(prep, "tissue")


def test_probe_on_real_corpus(corpus, pretrained):
    res = probe(corpus, pretrained, "label", n_splits=3, progress=False)
    t = results_table(res)
    assert list(t.index) == ["linear_probe", "logreg_log1p_tpm", "pca50_logreg"]
    # sex is easy from expression: the log-TPM baseline must be nearly perfect
    assert t.loc["logreg_log1p_tpm", "accuracy"] > 0.9
    with pytest.raises(ValueError, match="no label column 'tissue'"):
        probe(corpus, pretrained, "tissue", progress=False)
    labels = np.array(corpus.samples["label"], dtype=object)
    labels[:2] = np.nan
    with pytest.raises(ValueError, match="2 of .* samples have no label"):
        probe(corpus, pretrained, labels, progress=False)
