"""`bulkformer benchmark`: stratified saved folds that reproduce the numbers, the RF protocol,
atomic output, and the clear errors (absent label, small class, mismatched reference)."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bulkformer.cli import main
from bulkformer.eval.benchmark import read_folds, run_benchmark, write_folds
from bulkformer.eval.probe import make_folds, random_forest


def test_folds_stratified_saved_and_reloaded(tmp_path):
    y = np.array(["a"] * 23 + ["b"] * 11 + ["c"] * 6, dtype=object)
    ids = np.array([f"s{i}" for i in range(len(y))])
    folds = make_folds(y, n_splits=5, seed=2)
    counts = np.array([[np.sum(y[te] == c) for c in "abc"] for _, te in folds])
    # stratified: each fold holds its share of every class, to within one sample
    assert (np.abs(counts - np.array([23, 11, 6]) / 5) < 1).all()
    p = write_folds(tmp_path / "folds.tsv", ids, y, folds)
    df = pd.read_csv(p, sep="\t")
    assert list(df.columns) == ["sample_id", "label", "fold"] and len(df) == len(y)
    # rows in another order come back as the same folds of the same samples
    perm = np.random.default_rng(0).permutation(len(y))
    back = read_folds(p, ids[perm], y[perm])
    assert len(back) == 5
    for (tr, te), (tr2, te2) in zip(folds, back):
        assert set(ids[te]) == set(ids[perm][te2]) and set(ids[tr]) == set(ids[perm][tr2])
    with pytest.raises(ValueError, match="do not match"):
        read_folds(p, ids[:-1])
    y2 = y.copy()
    y2[0] = "b"
    with pytest.raises(ValueError, match="label 'a' in the file but 'b'"):
        read_folds(p, ids, y2)
    with pytest.raises(ValueError, match="two test parts"):
        write_folds(tmp_path / "x.tsv", ids, y, folds + folds[:1])


def test_random_forest_protocol_equals_sklearn():
    rng = np.random.default_rng(0)
    y = np.repeat(["p", "q", "r"], 20).astype(object)
    X = rng.normal(size=(60, 70)) + (y == "q")[:, None] * 0.7
    folds = make_folds(y, n_splits=3, seed=1)
    res = random_forest(X, y, folds, n_estimators=25, seed=3)
    want = []
    for tr, te in folds:
        est = make_pipeline(
            StandardScaler(),
            PCA(min(50, len(tr) - 1), random_state=3),
            RandomForestClassifier(n_estimators=25, random_state=3),
        )
        want.append(f1_score(y[te], est.fit(X[tr], y[tr]).predict(X[te]), average="weighted"))
    assert res.metrics["f1_weighted"] == pytest.approx(np.mean(want))
    assert res.per_fold["f1_weighted"].tolist() == pytest.approx(want)


def _bench(corpus, ckpt, out, **kw):
    kw = {"n_splits": 3, "rf_trees": 20, "n_masks": 1, "progress": False, **kw}
    return run_benchmark(ckpt, corpus, label="label", out=out, **kw)


def test_benchmark_writes_tables_and_reproduces_from_folds(corpus, ckpt, tmp_path):
    out = tmp_path / "b"
    res = _bench(corpus, ckpt, out, seed=0)
    for name in (
        "benchmark.tsv",
        "benchmark.md",
        "folds.tsv",
        "imputation.tsv",
        "per_fold.tsv",
        "info.json",
    ):
        assert (out / name).stat().st_size > 0, name
    assert not list(tmp_path.glob(".b.tmp-*"))
    cls = pd.read_csv(out / "benchmark.tsv", sep="\t", index_col=0)
    assert list(cls.index) == [
        "rf_bulkformer",
        "linear_probe",
        "logreg_log1p_tpm",
        "pca50_logreg",
        "rf_log1p_tpm",
    ]
    assert cls.loc["logreg_log1p_tpm", "f1_weighted"] > 0.9  # sex is easy from the genes
    imp = pd.read_csv(out / "imputation.tsv", sep="\t", index_col=0)
    assert list(imp.index) == ["bulkformer", "gene_mean", "knn", "pca"]
    assert imp["n_masked"].nunique() == 1  # the same masked positions for every method
    assert imp.loc["pca", "mse_z"] < imp.loc["gene_mean", "mse_z"]
    md = (out / "benchmark.md").read_text()
    assert "| rf_bulkformer |" in md and " ± " in md and "r_z" in md
    info = json.loads((out / "info.json").read_text())
    assert info["folds"] == 3 and info["imputation"]["pca_k"] >= 1
    # the saved folds reproduce every number, even when --folds asks for something else
    again = _bench(corpus, ckpt, tmp_path / "b2", seed=0, folds_file=out / "folds.tsv", n_splits=5)
    pd.testing.assert_frame_equal(
        again.classification.drop(columns="seconds"), res.classification.drop(columns="seconds")
    )
    other = _bench(corpus, ckpt, tmp_path / "b3", seed=0, n_splits=5, impute=False)
    assert other.info["folds"] == 5
    # a non-empty output is refused, and replaced whole with overwrite
    with pytest.raises(FileExistsError, match="--overwrite"):
        _bench(corpus, ckpt, out)
    _bench(corpus, ckpt, out, overwrite=True, impute=False)
    assert not (out / "imputation.tsv").exists() and (out / "folds.tsv").exists()


def test_benchmark_cli_and_errors(corpus, ckpt, tmp_path, capsys):
    base = ["benchmark", str(ckpt), "--corpus", str(corpus.path), "--rf-trees", "10"]
    out = tmp_path / "c"
    rc = main([*base, "--label", "sex", "--folds", "3", "--out", str(out), "--no-impute"])
    assert rc == 0  # the corpus was built with --label sex: "sex" finds its label column
    txt = capsys.readouterr().out
    assert "| rf_bulkformer |" in txt and "weighted F1" in txt
    assert pd.read_csv(out / "folds.tsv", sep="\t")["fold"].nunique() == 3

    rc = main([*base, "--label", "tissue", "--out", str(tmp_path / "e1")])
    err = capsys.readouterr().err
    assert rc == 1 and f"{corpus.path}: no label column 'tissue'; available: " in err
    assert "label" in err.split("available:")[1] and not (tmp_path / "e1").exists()

    rc = main([*base, "--label", "label", "--folds", "50", "--out", str(tmp_path / "e2")])
    err = capsys.readouterr().err
    assert rc == 1 and "fewer samples than the 50 folds: " in err and "'female' (41)" in err
    assert "label 'label'" in err and not (tmp_path / "e2").exists()

    full = corpus.manifest["derived_from"]["path"]  # 19,944 genes; the checkpoint has 64
    rc = main(
        [
            "benchmark",
            str(ckpt),
            "--corpus",
            full,
            "--label",
            "label",
            "--out",
            str(tmp_path / "e3"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "uses gene reference" in err and "rebuild the corpus" in err
    assert not (tmp_path / "e3").exists()
    assert not list(tmp_path.glob(".e*.tmp-*"))


def test_benchmark_h5ad_input(corpus, ckpt, tmp_path, capsys):
    adata = corpus.to_anndata()
    adata.obs["tissue"] = "LCL"
    adata.write_h5ad(tmp_path / "z.h5ad")
    rc = main(
        [
            "benchmark",
            str(ckpt),
            "--input",
            str(tmp_path / "z.h5ad"),
            "--values",
            "z",
            "--label",
            "cell",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and f"{tmp_path / 'z.h5ad'}: no label column 'cell'; available: " in err
    assert "tissue" in err
    rc = main(
        [
            "benchmark",
            str(ckpt),
            "--input",
            str(tmp_path / "z.h5ad"),
            "--values",
            "z",
            "--label",
            "tissue",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 1 and "single class" in capsys.readouterr().err
    bad = adata.copy()
    bad.var_names = [f"X{i}" for i in range(bad.n_vars)]
    bad.write_h5ad(tmp_path / "bad.h5ad")
    rc = main(
        [
            "benchmark",
            str(ckpt),
            "--input",
            str(tmp_path / "bad.h5ad"),
            "--values",
            "z",
            "--label",
            "tissue",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "only 0 of 64 genes of the checkpoint's reference" in err, err


def test_benchmark_passes_min_gene_overlap_to_the_input_check(corpus, ckpt, tmp_path, capsys):
    # 90% of the checkpoint's genes present: accepted by default, refused when 0.99 is asked
    adata = corpus.to_anndata()
    n_bad = max(1, adata.n_vars // 10)
    adata.var_names = [f"X{i}" for i in range(n_bad)] + list(adata.var_names[n_bad:])
    adata.write_h5ad(tmp_path / "part.h5ad")
    rc = main(
        ["benchmark", str(ckpt), "--input", str(tmp_path / "part.h5ad"), "--values", "z",
         "--label", "label", "--min-gene-overlap", "0.99", "--out", str(tmp_path / "o")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "lower min_gene_overlap" in err, err
    assert not (tmp_path / "o").exists()
