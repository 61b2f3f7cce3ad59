"""``evaluate``: every downstream check of a checkpoint on labelled data, written as a report.

Steps (each timed): prepare the input → embed → linear probe vs baselines (same folds) →
optional fine-tuning → imputation vs gene-mean and kNN → clustering scores and UMAP/t-SNE of
the embeddings beside the log1p(TPM) baseline → files in ``out``::

    report.md, report.html      the report (tables + figure)
    classification.csv          method × metric (mean, std over folds, seconds)
    classification_folds.csv    per-fold scores of every method
    confusion_<method>.csv      pooled out-of-fold confusion matrices
    imputation.csv              method × (pearson_r, mse on log1p TPM; pearson_r_z, mse_z)
    clustering.csv              feature set × (silhouette, ARI of k-means)
    timings.csv                 step → seconds
    projections.png             UMAP and t-SNE, embeddings vs log1p(TPM), coloured by label
    embeddings.npy              (N, D) sample embeddings
"""

from __future__ import annotations

import html
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["EvalReport", "evaluate", "markdown_table"]

log = logging.getLogger(__name__)


@dataclass
class EvalReport:
    """What :func:`evaluate` returns (the tables are also in ``out`` as CSV)."""

    out: Path
    classification: pd.DataFrame
    imputation: pd.DataFrame | None
    clustering: pd.DataFrame | None
    timings: dict
    info: dict = field(default_factory=dict)

    @property
    def markdown(self) -> Path:
        return self.out / "report.md"

    @property
    def html(self) -> Path:
        return self.out / "report.html"


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A GitHub-flavoured Markdown table (no dependency on ``tabulate``)."""

    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return "nan" if np.isnan(v) else format(v, floatfmt)
        return str(v)

    d = df.reset_index()
    head = "| " + " | ".join(map(str, d.columns)) + " |"
    sep = "|" + "|".join("---" for _ in d.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in d.itertuples(index=False)]
    return "\n".join([head, sep, *body])


class _Timer:
    def __init__(self):
        self.t: dict[str, float] = {}

    def __call__(self, name):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.t[name] = round(time.perf_counter() - self.t0, 3)

        return _Ctx()


def _holdout(prep, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out rows for imputation: the corpus' val + test split, else a seeded 20%."""
    if prep.kind == "corpus" and "split" in prep.obs.columns:
        s = prep.obs["split"].to_numpy()
        te, tr = np.flatnonzero(s != "train"), np.flatnonzero(s == "train")
        if len(te) and len(tr):
            return tr, te
    rng = np.random.default_rng(seed)
    perm = rng.permutation(prep.n_obs)
    n_te = max(1, prep.n_obs // 5)
    return np.sort(perm[n_te:]), np.sort(perm[:n_te])


def evaluate(
    pretrained,
    data,
    *,
    label,
    out,
    values: str = "counts",
    gene_ids=None,
    layer: str | None = None,
    gene_column: str | None = None,
    min_gene_overlap: float = 0.5,
    how: str | None = None,
    n_splits: int = 5,
    split=None,
    seed: int = 0,
    finetune: bool = True,
    finetune_epochs: int = 10,
    finetune_lr: float = 1e-2,
    impute: bool = True,
    impute_fraction: float = 0.15,
    plots: bool = True,
    batch_size: int = 16,
    device=None,
    progress: bool = True,
    title: str = "BulkFormer evaluation",
) -> EvalReport:
    """Run all downstream evaluations of a checkpoint on labelled data and write a report.

    Parameters
    ----------
    pretrained : :class:`~bulkformer.model.pretrained.Pretrained` or its directory.
    data : a :class:`~bulkformer.data.corpus.Corpus` (or directory), AnnData or numpy
        matrix (see :func:`bulkformer.eval.embed`).
    label : labels (N,), or the name of the label column (``"label"`` for a corpus built with
        ``--label``; an ``obs`` column for AnnData).
    out : report directory (created).
    n_splits, split, seed : folds of the classification (:func:`~bulkformer.eval.probe.make_folds`).
    finetune, finetune_epochs, finetune_lr : cross-validated fine-tuning (slowest step).
    impute, impute_fraction : imputation of held-out samples (corpus: val + test split).
    plots : UMAP + t-SNE figure and cluster scores.

    Returns
    -------
    :class:`EvalReport`.
    """
    from .embed import prepare_input, resolve_pretrained, run_model
    from .finetune import finetune_cv
    from .impute import impute_eval
    from .probe import baselines, labels_of, linear_probe, make_folds, results_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tm = _Timer()
    with tm("load"):
        pre = resolve_pretrained(pretrained)
    with tm("prepare"):
        prep = prepare_input(
            data,
            pre,
            values=values,
            gene_ids=gene_ids,
            layer=layer,
            gene_column=gene_column,
            min_gene_overlap=min_gene_overlap,
        )
        y = labels_of(prep, label)
        folds = make_folds(y, n_splits=n_splits, seed=seed, split=split)
        z = prep.z()
    with tm("embed"):
        emb, _ = run_model(
            prep, pre.model, how=how, batch_size=batch_size, device=device, progress=progress
        )
    np.save(out / "embeddings.npy", emb)
    with tm("linear_probe"):
        results = [linear_probe(emb, y, folds, seed=seed)]
    if finetune:
        with tm("finetune"):
            results.append(
                finetune_cv(
                    prep,
                    pre.model,
                    y,
                    folds,
                    how=how,
                    epochs=finetune_epochs,
                    lr=finetune_lr,
                    batch_size=batch_size,
                    device=device,
                    seed=seed,
                    progress=progress,
                )
            )
    with tm("baselines"):
        results += baselines(z, y, folds, seed=seed)
    cls = results_table(results)
    cls.to_csv(out / "classification.csv")
    pd.concat([r.per_fold.assign(method=r.method) for r in results]).to_csv(
        out / "classification_folds.csv", index=False
    )
    for r in results:
        r.confusion.to_csv(out / f"confusion_{r.method}.csv")

    imp = None
    if impute:
        with tm("imputation"):
            tr, te = _holdout(prep, seed)
            imp = impute_eval(
                prep,
                pre,
                te,
                tr,
                fraction=impute_fraction,
                batch_size=batch_size,
                device=device,
                seed=seed,
            ).table
        imp.to_csv(out / "imputation.csv")

    clus = None
    figure = None
    if plots:
        from .plots import cluster_scores, plot_projections, projections

        feats = {"BulkFormer embedding": emb, "log1p TPM (z)": z}
        with tm("cluster_scores"):
            clus = pd.DataFrame(
                {k: cluster_scores(v, y, seed=seed) for k, v in feats.items()}
            ).T.rename_axis("features")
        clus.to_csv(out / "clustering.csv")
        coords, proj_t = projections(feats, seed=seed)
        for k, v in proj_t.items():
            tm.t[k] = round(v, 3)
        with tm("plot"):
            figure = plot_projections(
                coords,
                y,
                out / "projections.png",
                title=f"{title}: coloured by {label_name(label, data)}",
            )
    timings = dict(tm.t)
    pd.Series(timings, name="seconds").rename_axis("step").to_csv(out / "timings.csv")
    info = {
        "checkpoint": str(pre.path),
        "reference_id": pre.reference.id,
        "n_genes": len(pre.reference),
        "d_model": pre.model.config.d_model,
        "n_samples": int(prep.n_obs),
        "coverage": round(float(prep.coverage), 4),
        "classes": {str(k): int(v) for k, v in pd.Series(y).value_counts().items()},
        "folds": len(folds),
        "pooling": how or pre.model.config.pooling,
        "input": prep.kind,
    }
    rep = EvalReport(out, cls, imp, clus, timings, info)
    _write_report(rep, title, label_name(label, data), figure, pre.metadata)
    return rep


def label_name(label, data=None) -> str:
    """How to call the label in titles: the column name, or for a corpus' ``label`` column the
    metadata field it was built from (``bulkformer preprocess --label sex`` → ``sex``)."""
    if not isinstance(label, str):
        return "label"
    if label == "label":
        manifest = getattr(data, "manifest", None)
        if manifest is None and isinstance(data, (str, os.PathLike)):
            mf = Path(data) / "manifest.json"
            manifest = json.loads(mf.read_text()) if mf.is_file() else None
        field = ((manifest or {}).get("parameters") or {}).get("label")
        if isinstance(field, str) and field:
            return field
    return label


_METRIC_COLS = [
    "f1_weighted",
    "f1_weighted_std",
    "f1_macro",
    "f1_macro_std",
    "accuracy",
    "accuracy_std",
    "seconds",
]


def _write_report(rep: EvalReport, title: str, label: str, figure, meta: dict) -> None:
    info = rep.info
    md = [f"# {title}", ""]
    md += [f"- **{k}**: {v}" for k, v in info.items()]
    train = {k: v for k, v in (meta or {}).items() if k not in ("bulkformer_version",)}
    if train:
        md += ["", "Checkpoint metadata: `" + json.dumps(train, default=str)[:600] + "`"]
    md += [
        "",
        f"## Classification of `{label}` ({info['folds']}-fold, same folds for every method)",
        "",
        markdown_table(rep.classification[[c for c in _METRIC_COLS if c in rep.classification]]),
        "",
        "`linear_probe`: logistic regression on standardized frozen embeddings; `finetune`: "
        "head on the pooled embedding, encoder at 0.1× LR; `logreg_log1p_tpm`: logistic "
        "regression on the z-scored log1p(TPM) of the model's input genes; `pca50_logreg`: "
        "PCA(50) then logistic regression. Mean ± std over folds.",
    ]
    if rep.imputation is not None:
        md += [
            "",
            "## Imputation of masked genes in held-out samples",
            "",
            markdown_table(rep.imputation),
            "",
            "`pearson_r`/`mse`: over all masked entries, log1p(TPM) scale; `_z`: z scale. "
            "`gene_mean`: training-sample mean of each gene; `knn`: k = 10 nearest training "
            "samples on the unmasked genes.",
        ]
    if rep.clustering is not None:
        md += [
            "",
            "## Clustering",
            "",
            markdown_table(rep.clustering),
            "",
            "Silhouette of the labels and ARI of k-means (k = classes), after "
            "standardization (and PCA(50) when wider).",
        ]
    if figure is not None:
        md += ["", "## UMAP and t-SNE", "", f"![projections]({Path(figure).name})"]
    t = pd.Series(rep.timings, name="seconds").rename_axis("step").to_frame()
    md += ["", "## Timings", "", markdown_table(t, ".2f"), ""]
    rep.markdown.write_text("\n".join(md))

    def h(df, fmt="{:.3f}"):
        return df.to_html(float_format=lambda v: fmt.format(v), border=0)

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;max-width:"
        "980px;margin:2em auto}table{border-collapse:collapse}td,th{padding:2px 8px;"
        "border-bottom:1px solid #ddd;text-align:right}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><ul>",
        *[f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in info.items()],
        "</ul>",
        f"<h2>Classification of <code>{html.escape(label)}</code></h2>",
        h(rep.classification),
    ]
    if rep.imputation is not None:
        parts += ["<h2>Imputation</h2>", h(rep.imputation)]
    if rep.clustering is not None:
        parts += ["<h2>Clustering</h2>", h(rep.clustering)]
    if figure is not None:
        parts += ["<h2>UMAP and t-SNE</h2>", f"<img src='{Path(figure).name}' width='100%'>"]
    parts += ["<h2>Timings</h2>", h(t, "{:.2f}"), "</body></html>"]
    rep.html.write_text("\n".join(parts))
