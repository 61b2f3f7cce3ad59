"""``evaluate``: every downstream check of a checkpoint on labelled data, written as a report.

Steps (each timed): prepare the input → embed → linear probe and random forest (BulkFormer's
protocol) vs baselines (same folds) → optional fine-tuning (early stopping) → imputation vs
gene-mean, kNN and a PCA imputer (same masked positions) → clustering scores and UMAP/t-SNE of
the embeddings beside the log1p(TPM) baseline → files in ``out``::

    report.md, report.html      the report (tables + figure)
    classification.csv          method × metric (mean, std over folds, seconds)
    classification_folds.csv    per-fold scores of every method
    folds.tsv                   sample_id, label, fold: the folds every method used
    confusion_<method>.csv      pooled out-of-fold confusion matrices
    imputation.csv              method × (pearson_r, mse on log1p TPM; pearson_r_z, mse_z; ± std
                                over masks)
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

from .benchmark import classification_table

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
    finetune_epochs: int = 50,
    finetune_patience: int | None = 3,
    finetune_lr: float = 1e-2,
    random_forest: bool = True,
    rf_trees: int = 300,
    impute: bool = True,
    impute_fraction: float = 0.15,
    n_masks: int = 3,
    plots: bool = True,
    notes: list[str] | None = None,
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
    finetune, finetune_epochs, finetune_patience, finetune_lr : cross-validated fine-tuning
        (slowest step): at most ``finetune_epochs``, stopping when the loss on a validation
        split of the training fold has not fallen for ``finetune_patience`` epochs.
    random_forest, rf_trees : BulkFormer's protocol (PCA(50) → random forest) on the
        embeddings and on the genes.
    impute, impute_fraction, n_masks : imputation of held-out samples (corpus: val + test
        split), scored over ``n_masks`` masks.
    plots : UMAP + t-SNE figure and cluster scores.
    notes : Markdown paragraphs put at the top of the report (what a run can show).

    Returns
    -------
    :class:`EvalReport`.
    """
    from .benchmark import write_folds
    from .embed import prepare_input, resolve_pretrained, run_model
    from .finetune import finetune_cv
    from .impute import impute_eval
    from .probe import baselines, labels_of, linear_probe, make_folds
    from .probe import random_forest as rf_protocol

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pooling = {} if how is None else {"how": how}  # None: the model's default sample vector
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
            prep, pre.model, batch_size=batch_size, device=device, progress=progress, **pooling
        )
    np.save(out / "embeddings.npy", emb)
    with tm("linear_probe"):
        results = [linear_probe(emb, y, folds, seed=seed)]
    if random_forest:
        with tm("random_forest"):
            results.append(
                rf_protocol(emb, y, folds, method="rf_bulkformer", n_estimators=rf_trees, seed=seed)
            )
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
                    patience=finetune_patience,
                    lr=finetune_lr,
                    batch_size=batch_size,
                    device=device,
                    seed=seed,
                    progress=progress,
                )
            )
    with tm("baselines"):
        results += baselines(z, y, folds, seed=seed)
        if random_forest:
            results.append(
                rf_protocol(z, y, folds, method="rf_log1p_tpm", n_estimators=rf_trees, seed=seed)
            )
    cls = classification_table(results)
    cls.to_csv(out / "classification.csv")
    try:
        write_folds(out / "folds.tsv", prep.obs.index.astype(str), y, folds)
    except ValueError:  # a given train/test split is not a partition into test parts
        pd.DataFrame(
            {"sample_id": prep.obs.index.astype(str), "label": y, "role": _roles(len(y), folds)}
        ).to_csv(out / "folds.tsv", sep="\t", index=False)
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
                n_masks=n_masks,
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
    if imp is not None:
        info["imputation"] = dict(imp.attrs.get("settings", {}))
    ft = next((r for r in results if r.method == "finetune"), None)
    if ft is not None:
        info["finetune_epochs_run"] = ft.extra.get("epochs_run")
    rep = EvalReport(out, cls, imp, clus, timings, info)
    _write_report(rep, title, label_name(label, data), figure, pre.metadata, notes)
    return rep


def _roles(n, folds) -> np.ndarray:
    role = np.full(n, "unused", dtype=object)
    for tr, te in folds:
        role[tr], role[te] = "train", "test"
    return role


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


def training_summary(meta: dict) -> pd.DataFrame | None:
    """The checkpoint's training record as a two-column table (no raw JSON)."""
    tr = (meta or {}).get("training") or {}
    if not tr:
        return None
    rows = []

    def add(name, v, fmt=None):
        if v is not None:
            rows.append({"": name, "value": format(v, fmt) if fmt else str(v)})

    add("pretraining steps", tr.get("steps"))
    add("final training loss", tr.get("train_loss"), ".3f")
    add("validation MSE (z, masked genes)", tr.get("val_mse"), ".3f")
    add("gene-mean baseline on the same positions", tr.get("val_gene_mean_baseline"), ".3f")
    for k in ("val_knn_baseline", "val_mse_std"):
        add(k.replace("_", " "), tr.get(k), ".3f")
    add("tokens / s", tr.get("tokens_per_s"), ",.0f")
    opts = tr.get("options") or {}
    add("batch size × LR", f"{opts.get('batch_size')} × {opts.get('lr')}" if opts else None)
    add("corpus", (meta or {}).get("corpus"))
    return pd.DataFrame(rows).set_index("") if rows else None


def _write_report(rep: EvalReport, title: str, label: str, figure, meta: dict, notes=None) -> None:
    from .benchmark import pretty_classification, pretty_imputation

    info = rep.info
    about = pd.DataFrame(
        [{"": k, "value": v if not isinstance(v, dict) else _short(v)} for k, v in info.items()]
    ).set_index("")
    train = training_summary(meta)
    cls_txt = (
        f"{info['folds']}-fold stratified, the same folds for every method (`folds.tsv`); "
        "mean ± std over folds. `rf_bulkformer` is BulkFormer's published protocol (a random "
        "forest on PCA(50) of the frozen sample embeddings); `linear_probe`: logistic "
        "regression on the standardized embeddings; `finetune`: encoder + linear head, "
        "trained until the loss on a validation split of the training fold stops falling, "
        "best epoch kept; the rest are baselines on the z-scored log1p(TPM) of the model's "
        "input genes. Scalers and PCA are fit on each training fold."
    )
    s = info.get("imputation") or {}
    imp_txt = (
        f"{100 * 0.15:.0f}% of the observed genes of each held-out sample masked, "
        f"{s.get('n_masks', 1)} masks (mean ± std over them); every method is scored on the "
        "same masked positions. The baselines are fitted on the training samples only: "
        "`gene_mean` (each gene's mean), `knn` (k = "
        f"{s.get('knn_k', '?')}), `pca` (a linear imputer: top-{s.get('pca_k', '?')} "
        "principal components fitted to the sample's unmasked genes); both k were chosen on "
        "a validation split of the training samples. r (log1p) mostly measures how far apart "
        "the gene means are (the gene-mean row shows how much of it comes free); r_z is on "
        "the z scale, where each gene's mean is removed."
    )
    md = [f"# {title}", ""]
    for n in notes or []:
        md += [n, ""]
    md += ["## Classification of `" + label + "`", "", cls_txt, ""]
    md += [markdown_table(pretty_classification(rep.classification)), ""]
    if rep.imputation is not None:
        md += ["## Imputation of masked genes in held-out samples", "", imp_txt, ""]
        md += [markdown_table(pretty_imputation(rep.imputation)), ""]
    if rep.clustering is not None:
        md += [
            "## Clustering",
            "",
            "Silhouette of the labels and ARI of k-means (k = classes), after "
            "standardization (and PCA(50) when wider).",
            "",
            markdown_table(rep.clustering),
            "",
        ]
    if figure is not None:
        md += ["## UMAP and t-SNE", "", f"![projections]({Path(figure).name})", ""]
    md += ["## Run", "", markdown_table(about), ""]
    if train is not None:
        md += ["## Checkpoint", "", markdown_table(train), ""]
    t = pd.Series(rep.timings, name="seconds").rename_axis("step").to_frame()
    md += ["## Timings", "", markdown_table(t, ".2f"), ""]
    rep.markdown.write_text("\n".join(md))

    parts = [html_head(title), f"<h1>{html.escape(title)}</h1>"]
    parts += [markdown_paragraph_html(n) for n in notes or []]
    parts += [f"<h2>Classification of <code>{html.escape(label)}</code></h2>"]
    parts += [
        f"<p>{markdown_inline_html(cls_txt)}</p>",
        html_table(pretty_classification(rep.classification)),
    ]
    if rep.imputation is not None:
        parts += ["<h2>Imputation</h2>", f"<p>{markdown_inline_html(imp_txt)}</p>"]
        parts += [html_table(pretty_imputation(rep.imputation))]
    if rep.clustering is not None:
        parts += ["<h2>Clustering</h2>", html_table(rep.clustering)]
    if figure is not None:
        parts += ["<h2>UMAP and t-SNE</h2>", f"<img src='{Path(figure).name}' width='100%'>"]
    parts += ["<h2>Run</h2>", html_table(about)]
    if train is not None:
        parts += ["<h2>Checkpoint</h2>", html_table(train)]
    parts += ["<h2>Timings</h2>", html_table(t, "{:.2f}"), "</body></html>"]
    rep.html.write_text("\n".join(parts))


def _short(d: dict, n: int = 8) -> str:
    items = list(d.items())
    txt = ", ".join(f"{k}: {v}" for k, v in items[:n])
    return txt + (f", … ({len(items)} in all)" if len(items) > n else "")


def html_head(title: str) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;max-width:"
        "980px;margin:2em auto;line-height:1.4}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}"
        "code{background:#f4f4f4}</style></head><body>"
    )


def html_table(df: pd.DataFrame, fmt: str = "{:.3f}") -> str:
    """An HTML table of ``df`` (floats formatted with ``fmt``)."""
    return df.to_html(float_format=lambda v: fmt.format(v), border=0, escape=True)


def markdown_inline_html(text: str) -> str:
    """Escape ``text`` and turn its `code` and **bold** spans into HTML."""
    import re

    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", t)


def markdown_paragraph_html(text: str) -> str:
    """A Markdown paragraph or ``- `` list (and ``## `` heading) as HTML."""
    lines = text.splitlines()
    if lines and lines[0].startswith("## "):
        return f"<h2>{markdown_inline_html(lines[0][3:])}</h2>" + (
            markdown_paragraph_html("\n".join(lines[1:]).strip()) if len(lines) > 1 else ""
        )
    if lines and all(x.startswith("- ") or x.startswith("  ") for x in lines):
        items, cur = [], []
        for x in lines:
            if x.startswith("- ") and cur:
                items.append(" ".join(cur))
                cur = []
            cur.append(x[2:].strip() if x.startswith("- ") else x.strip())
        items.append(" ".join(cur))
        return "<ul>" + "".join(f"<li>{markdown_inline_html(i)}</li>" for i in items) + "</ul>"
    return f"<p>{markdown_inline_html(' '.join(lines))}</p>"
