"""``bulkformer benchmark``: a checkpoint against strong baselines on a labelled data set.

One protocol, one set of folds for every method (stratified K-fold, 10 by default, as
BulkFormer reports), written to ``folds.tsv`` so that anyone can reproduce a number:

classification (weighted F1, macro F1, accuracy; mean ± std over folds)
    ``rf_bulkformer``     BulkFormer's protocol: standardize → PCA(50) → random forest on the
                          frozen sample embeddings
    ``linear_probe``      standardize → logistic regression on the same embeddings
    ``finetune``          optional (``finetune=True``): encoder + head, early stopping
    ``logreg_log1p_tpm``  standardize → logistic regression on the z-scored log1p(TPM) genes
    ``pca50_logreg``      … → PCA(50) → logistic regression
    ``rf_log1p_tpm``      … → PCA(50) → random forest (the RF protocol on the genes)

imputation (optional): the test rows of fold 0 (at most ``impute_samples``), masked; the
model against gene mean, kNN and the PCA imputer fitted on the other folds' rows, all scored
on the same masked positions (:func:`~bulkformer.eval.impute.impute_eval`).

Output directory (written under a temporary name, then renamed into place)::

    benchmark.tsv / benchmark.md   the classification table (the Markdown file also holds the
                                   imputation table and the run's parameters)
    imputation.tsv                 method × (pearson_r, pearson_r_z, mse, mse_z, ± std)
    per_fold.tsv                   method × fold scores
    folds.tsv                      sample_id, label, fold (the fold whose test part it is in)
    info.json                      checkpoint, data, label, seed, folds, chosen settings
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "BenchmarkResult",
    "run_benchmark",
    "write_folds",
    "read_folds",
    "resolve_label",
    "write_dir_atomic",
    "format_mean_std",
]

log = logging.getLogger(__name__)

FOLDS_FILE = "folds.tsv"


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` returns; the same tables are in ``out``."""

    out: Path
    classification: pd.DataFrame
    imputation: pd.DataFrame | None
    folds: list
    info: dict = field(default_factory=dict)


def format_mean_std(mean, std, fmt: str = ".3f") -> str:
    """``0.912 ± 0.034`` (``nan`` when the mean is missing)."""
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return "nan"
    if std is None or (isinstance(std, float) and np.isnan(std)):
        return format(mean, fmt)
    return f"{format(mean, fmt)} ± {format(std, fmt)}"


# ------------------------------------------------------------------------------------ folds
def write_folds(path, sample_ids, labels, folds) -> Path:
    """Write ``sample_id, label, fold`` (the fold whose test part holds the sample) as TSV.

    ``folds`` must be a partition: every sample in exactly one test part (K-fold).
    """
    ids = np.asarray(sample_ids, dtype=object)
    fold = np.full(len(ids), -1, dtype=np.int64)
    for k, (_, te) in enumerate(folds):
        if (fold[te] >= 0).any():
            raise ValueError("folds: a sample is in two test parts (not a K-fold partition)")
        fold[te] = k
    if (fold < 0).any():
        raise ValueError(f"folds: {int((fold < 0).sum())} sample(s) are in no test part")
    df = pd.DataFrame({"sample_id": ids.astype(str), "label": labels, "fold": fold})
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    df.to_csv(tmp, sep="\t", index=False)
    os.replace(tmp, path)
    return path


def read_folds(path, sample_ids, labels=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Folds of a ``folds.tsv`` (:func:`write_folds`), as index pairs into ``sample_ids``.

    Raises ValueError when the file lacks a column, or its samples are not exactly those of
    the data (named), or (with ``labels``) a sample's label differs.
    """
    path = Path(path)
    df = pd.read_csv(path, sep="\t", dtype={"sample_id": str, "label": str})
    for col in ("sample_id", "fold"):
        if col not in df.columns:
            raise ValueError(
                f"{path}: no column {col!r}; expected sample_id, label, fold "
                f"(found {', '.join(df.columns)})"
            )
    ids = pd.Index(np.asarray(sample_ids).astype(str))
    pos = ids.get_indexer(df["sample_id"])
    if (pos < 0).any() or len(df) != len(ids) or len(np.unique(pos)) != len(ids):
        missing = ids.difference(pd.Index(df["sample_id"]))
        extra = pd.Index(df["sample_id"]).difference(ids)
        raise ValueError(
            f"{path}: its samples do not match the data's ({len(df)} rows, {len(ids)} samples; "
            f"not in the file: {list(missing[:3])}, not in the data: {list(extra[:3])})"
        )
    fold = np.empty(len(ids), dtype=np.int64)
    fold[pos] = df["fold"].to_numpy(np.int64)
    if labels is not None and "label" in df.columns:
        lab = np.empty(len(ids), dtype=object)
        lab[pos] = df["label"].astype(str).to_numpy()
        bad = np.flatnonzero(lab != np.asarray(labels).astype(str))
        if len(bad):
            raise ValueError(
                f"{path}: sample {ids[bad[0]]!r} has label {lab[bad[0]]!r} in the file but "
                f"{np.asarray(labels)[bad[0]]!r} in the data ({len(bad)} differ)"
            )
    ks = np.unique(fold)
    if len(ks) < 2:
        raise ValueError(f"{path}: a single fold; need at least 2")
    return [(np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for k in ks]


# ------------------------------------------------------------------------------------ input
def resolve_label(prep, label: str, data=None, where: str = "the samples") -> str:
    """The ``obs`` column holding ``label``: itself, or ``label`` for a corpus built with
    ``--label FIELD`` when FIELD is asked for. ValueError naming ``where`` and the columns."""
    obs = prep.obs
    if label in obs.columns:
        return label
    manifest = getattr(data, "manifest", None) or {}
    built = (manifest.get("parameters") or {}).get("label")
    if built == label and "label" in obs.columns:
        return "label"
    hint = f" (this corpus was built with --label {built!r}: use 'label')" if built else ""
    raise ValueError(
        f"{where}: no label column {label!r}; available: "
        f"{', '.join(map(str, obs.columns)) or '(none)'}{hint}"
    )


def write_dir_atomic(out, write, *, overwrite: bool = False) -> Path:
    """Call ``write(tmpdir)`` in a sibling temporary directory, then rename it to ``out``.

    A non-empty ``out`` is refused (FileExistsError) unless ``overwrite``; it is replaced only
    once the new directory is complete. On error the temporary directory is removed.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass --overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _describe(data) -> str:
    p = getattr(data, "path", None)
    if p is not None:
        return f"corpus {p}"
    return str(data) if isinstance(data, (str, os.PathLike)) else type(data).__name__


# ------------------------------------------------------------------------------------ run
def run_benchmark(
    pretrained,
    data,
    *,
    label: str,
    out,
    n_splits: int = 10,
    seed: int = 0,
    folds_file=None,
    values: str = "counts",
    layer: str | None = None,
    gene_column: str | None = None,
    min_gene_overlap: float = 0.5,
    how: str | None = None,
    batch_size: int = 16,
    device=None,
    finetune: bool = False,
    finetune_epochs: int = 50,
    patience: int = 3,
    impute: bool = True,
    impute_fraction: float = 0.15,
    impute_samples: int = 500,
    n_masks: int = 3,
    rf_trees: int = 500,
    n_jobs: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    where: str | None = None,
) -> BenchmarkResult:
    """Score a checkpoint and the baselines on one labelled data set; write the tables.

    Parameters
    ----------
    pretrained : :class:`~bulkformer.model.pretrained.Pretrained` or its directory.
    data : corpus (or its directory) or AnnData (see :func:`bulkformer.eval.embed`).
    label : the label column (an ``obs`` column; for a corpus ``label``, or the field it was
        built with).
    out : output directory (see the module docstring); refused when it is not empty unless
        ``overwrite``.
    n_splits, seed : stratified K-fold; ``folds_file``: reuse the folds of a ``folds.tsv``.
    min_gene_overlap : fraction of the checkpoint's genes the input must cover (see
        :func:`~bulkformer.eval.embed.prepare_input`).
    how : pooling passed to the model (``None``: the embedding's default).
    finetune, finetune_epochs, patience : add cross-validated fine-tuning (slow on a CPU).
    impute, impute_fraction, impute_samples, n_masks : the imputation comparison.
    rf_trees, n_jobs : the random forests.
    where : how to name the data in error messages (default: its path).

    Raises
    ------
    ValueError
        An absent label column (naming the file and the columns present), a class with fewer
        samples than folds (naming it), input sharing no gene with the checkpoint.
    ReferenceMismatchError
        A corpus built on another gene reference than the checkpoint's.
    """
    from .embed import prepare_input, resolve_pretrained, run_model
    from .finetune import finetune_cv
    from .impute import impute_eval
    from .probe import baselines, check_labels, linear_probe, make_folds, random_forest

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass --overwrite)")
    where = where or _describe(data)
    t_start = time.perf_counter()
    pre = resolve_pretrained(pretrained)
    prep = prepare_input(
        data, pre, values=values, layer=layer, gene_column=gene_column,
        min_gene_overlap=min_gene_overlap,
    )  # fmt: skip
    if prep.n_matched == 0:
        raise ValueError(
            f"{where}: none of its genes is in the checkpoint's gene reference "
            f"({pre.reference.id}, {len(pre.reference)} genes): check the gene IDs "
            "(Ensembl) or --gene-column"
        )
    col = resolve_label(prep, label, data, where)
    y = prep.obs[col].astype(str).to_numpy(dtype=object)
    ids = prep.obs.index.astype(str).to_numpy()
    if folds_file is not None:
        check_labels(y, None)
        folds = read_folds(folds_file, ids, y)
    else:
        try:
            folds = make_folds(y, n_splits=n_splits, seed=seed)
        except ValueError as e:
            raise ValueError(f"{where}, label {label!r}: {e}") from None
    z = prep.z()
    kw = {} if how is None else {"how": how}
    t = time.perf_counter()
    emb, _ = run_model(
        prep, pre.model, batch_size=batch_size, device=device, progress=progress, **kw
    )
    embed_s = time.perf_counter() - t

    results = [
        random_forest(
            emb, y, folds, method="rf_bulkformer", n_estimators=rf_trees, seed=seed, n_jobs=n_jobs
        ),
        linear_probe(emb, y, folds, seed=seed),
    ]
    if finetune:
        results.append(
            finetune_cv(
                prep,
                pre.model,
                y,
                folds,
                epochs=finetune_epochs,
                patience=patience,
                batch_size=batch_size,
                device=device,
                seed=seed,
                progress=progress,
                **kw,
            )
        )
    results += baselines(z, y, folds, seed=seed)
    results.append(
        random_forest(
            z, y, folds, method="rf_log1p_tpm", n_estimators=rf_trees, seed=seed, n_jobs=n_jobs
        )
    )
    cls = classification_table(results)

    imp, settings = None, {}
    if impute:
        tr, te = folds[0]
        if len(te) > impute_samples:
            te = np.sort(np.random.default_rng(seed).choice(te, impute_samples, replace=False))
        res = impute_eval(
            prep,
            pre,
            te,
            tr,
            fraction=impute_fraction,
            n_masks=n_masks,
            batch_size=batch_size,
            device=device,
            seed=seed,
        )
        imp = res.table
        settings = dict(imp.attrs.get("settings", {}))

    info = {
        "checkpoint": str(pre.path),
        "data": where,
        "label": label,
        "n_samples": int(len(y)),
        "classes": {str(k): int(v) for k, v in pd.Series(y).value_counts().items()},
        "folds": len(folds),
        "folds_from": str(folds_file) if folds_file is not None else f"stratified, seed {seed}",
        "seed": seed,
        "pooling": how or "default",
        "embedding_dim": int(emb.shape[1]),
        "coverage": round(float(prep.coverage), 4),
        "embed_seconds": round(embed_s, 2),
        "seconds": round(time.perf_counter() - t_start, 2),
        "imputation": {
            **settings,
            "test_samples": int(len(te)) if impute else 0,
            "fraction": impute_fraction,
        }
        if impute
        else None,
    }

    def write(d: Path):
        cls.to_csv(d / "benchmark.tsv", sep="\t")
        pd.concat([r.per_fold.assign(method=r.method) for r in results]).to_csv(
            d / "per_fold.tsv", sep="\t", index=False
        )
        write_folds(d / FOLDS_FILE, ids, y, folds)
        if imp is not None:
            imp.to_csv(d / "imputation.tsv", sep="\t")
        (d / "info.json").write_text(json.dumps(info, indent=2) + "\n")
        (d / "benchmark.md").write_text(benchmark_markdown(cls, imp, info))

    write_dir_atomic(out, write, overwrite=overwrite)
    log.info("benchmark written to %s", out)
    return BenchmarkResult(out, cls, imp, folds, info)


#: what each classification row is, for the tables
METHOD_NOTES = {
    "rf_bulkformer": ("BulkFormer embedding", "PCA(50) → random forest"),
    "linear_probe": ("BulkFormer embedding", "logistic regression"),
    "finetune": ("BulkFormer (fine-tuned)", "linear head, early stopping"),
    "logreg_log1p_tpm": ("log1p TPM genes", "logistic regression"),
    "pca50_logreg": ("log1p TPM genes", "PCA(50) → logistic regression"),
    "rf_log1p_tpm": ("log1p TPM genes", "PCA(50) → random forest"),
}


def classification_table(results) -> pd.DataFrame:
    """method × (features, classifier, f1_weighted, f1_weighted_std, f1_macro, f1_macro_std,
    accuracy, accuracy_std, seconds)."""
    rows = []
    for r in results:
        feats, clf = METHOD_NOTES.get(r.method, ("", ""))
        rows.append(
            {
                "method": r.method,
                "features": feats,
                "classifier": clf,
                **r.metrics,
                "seconds": round(r.seconds, 2),
            }
        )
    return pd.DataFrame(rows).set_index("method")


def pretty_classification(cls: pd.DataFrame) -> pd.DataFrame:
    """Display form: method | features | classifier | weighted F1 | macro F1 | accuracy, each
    as mean ± std over folds."""
    out = pd.DataFrame(index=cls.index)
    for c in ("features", "classifier"):
        if c in cls:
            out[c] = cls[c]
    for m, name in (
        ("f1_weighted", "weighted F1"),
        ("f1_macro", "macro F1"),
        ("accuracy", "accuracy"),
    ):
        if m in cls:
            out[name] = [
                format_mean_std(a, b)
                for a, b in zip(cls[m], cls.get(m + "_std", [None] * len(cls)))
            ]
    return out


def pretty_imputation(imp: pd.DataFrame) -> pd.DataFrame:
    """Display form: method | r (log1p) | r_z | MSE (z) | MSE (log1p), mean ± std."""
    out = pd.DataFrame(index=imp.index)
    for c, name in (
        ("pearson_r", "r (log1p)"),
        ("pearson_r_z", "r_z"),
        ("mse_z", "MSE (z)"),
        ("mse", "MSE (log1p)"),
    ):
        if c in imp:
            std = imp[c + "_std"] if c + "_std" in imp else [None] * len(imp)
            out[name] = [format_mean_std(a, b) for a, b in zip(imp[c], std)]
    return out


def benchmark_markdown(cls: pd.DataFrame, imp: pd.DataFrame | None, info: dict) -> str:
    """The benchmark report as Markdown."""
    from .report import markdown_table

    md = [
        "# BulkFormer benchmark",
        "",
        f"- checkpoint: `{info['checkpoint']}`",
        f"- data: {info['data']} — {info['n_samples']} samples, label `{info['label']}` "
        f"({len(info['classes'])} classes)",
        f"- folds: {info['folds']} ({info['folds_from']}; in `folds.tsv`), the same for every "
        "method",
        f"- embedding: {info['embedding_dim']} dims, pooling {info['pooling']}",
        "",
        "## Classification (mean ± std over folds)",
        "",
        markdown_table(pretty_classification(cls)),
        "",
        "`rf_bulkformer` is BulkFormer's published protocol (a random forest on PCA(50) of the "
        "frozen sample embeddings, weighted F1). Scalers and PCA are fit on each training fold.",
    ]
    if imp is not None:
        s = info.get("imputation") or {}
        md += [
            "",
            f"## Imputation ({s.get('test_samples', '?')} samples of fold 0, "
            f"{100 * s.get('fraction', 0):.0f}% of their genes masked, "
            f"{s.get('n_masks', 1)} masks)",
            "",
            markdown_table(pretty_imputation(imp)),
            "",
            "All methods are scored on the same masked positions. r (log1p) is dominated by the "
            "differences between gene means (the gene-mean row shows how much); r_z is on the "
            f"z scale. kNN k = {s.get('knn_k', '?')} and PCA k = {s.get('pca_k', '?')} were "
            "chosen on a validation split of the training rows.",
        ]
    md += ["", f"Run time: {info['seconds']:.0f} s.", ""]
    return "\n".join(md)
