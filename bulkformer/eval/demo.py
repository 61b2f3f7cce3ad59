"""``bulkformer demo``: the whole pipeline end to end, on the bundled data or a user's corpus.

::

    preprocess (counts → log1p TPM → z, splits stratified by the label)
      → keep the N most variable genes (CPU attention over 20k genes is ~30 s/sample)
      → for each of ``seeds`` seeds:
          pretrain a small BulkFormer (bulkformer.train.pretrain)
          → evaluate: embed, linear probe, random forest and fine-tuning vs baselines
            (same folds), imputation vs gene mean / kNN / PCA (same masked positions)
      → UMAP/t-SNE of the first seed's embeddings
      → report (Markdown + HTML + CSV + PNG) in OUT/report: mean ± std over the seeds

Defaults: the bundled GEUVADIS file (85 samples, label ``sex``), 512 genes, the ``tiny``
preset, 400 steps, 3 seeds — a few minutes on 2 CPU cores. With ``--archs4`` / ``--gdc`` the
defaults scale up (all genes, 2,000 steps, the ``small`` preset on a GPU; 1,024 genes and 300
steps on a CPU) and one seed.

What a demo can show: that the pipeline runs end to end, and whether the model's sample vector
keeps what its input holds (a label the input genes carry). What it cannot show: transfer
learned at scale — that needs pretraining on a large corpus, on GPUs (the report says so).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["DemoResult", "run_demo", "demo_defaults", "aggregate_seeds", "DEMO_NOTES"]

#: what the demo report says it can and cannot show
DEMO_NOTES = [
    "## What this demo shows, and what it cannot",
    "- **It shows** that the whole pipeline works on real data (preprocess → pretrain → embed "
    "→ probe / fine-tune / impute → report), and whether the sample vector of a model "
    "pretrained *without labels* keeps what the input holds: here the label is easy to read "
    "off the input genes (the log-TPM baselines are the ceiling), so a probe of the embedding "
    "near them means the representation kept it. In the imputation rows the model's answer "
    "is its linear prior — the probabilistic PCA of the `pca` row, fitted on the same "
    "training samples — corrected by the transformer, so the gap between `bulkformer` and "
    "`pca` is exactly what the transformer adds (at demo scale, little).",
    "- **It cannot show** transfer: a model pretrained for minutes on {n} samples has seen "
    "nothing the baselines have not, so it is not expected to beat them. Whether pretraining "
    "brings something a linear model on the same genes does not can only be judged after "
    "pretraining on a large corpus (ARCHS4-scale, on GPUs), with `bulkformer benchmark` on "
    "held-out labelled data.",
]


@dataclass
class DemoResult:
    """Paths and numbers of one demo run."""

    out: Path
    corpus: Path
    checkpoint: Path
    report: object  # bulkformer.eval.report.EvalReport
    timings: dict = field(default_factory=dict)

    classification: object = None  # DataFrame: mean ± std over seeds (display form)
    imputation: object = None
    seeds: tuple = (0,)
    per_seed: list = field(default_factory=list)  # EvalReport of every seed

    def summary(self) -> str:
        """The metric tables and the report path, as printed by ``bulkformer demo``."""
        from .report import markdown_table

        r = self.report
        over = f"{len(self.seeds)} seeds" if len(self.seeds) > 1 else "folds"
        lines = [f"classification (weighted F1 etc., mean ± std over {over}):"]
        lines.append(
            markdown_table(
                self.classification.drop(columns=["features", "classifier"], errors="ignore")
            )
        )
        if self.imputation is not None:
            lines += [
                f"imputation (masked genes of held-out samples, mean ± std over {over if len(self.seeds) > 1 else 'masks'}):",
                markdown_table(self.imputation),
            ]
        if r.clustering is not None:
            lines += ["clustering (first seed):", markdown_table(r.clustering)]
        t = " · ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
        lines += [f"time: {t}", f"report: {self.out / 'report' / 'report.md'}"]
        lines += [f"        {self.out / 'report' / 'report.html'}"]
        return "\n".join(lines)


def demo_defaults(*, bundled: bool, gpu: bool) -> dict:
    """Default sizes: the bundled demo is CPU-sized; user data scales with the hardware."""
    from ..data.corpus.plan import DEFAULT_MIN_NONZERO
    from ..data.demo import DEMO_MIN_NONZERO

    if bundled:
        return dict(
            n_genes=512,
            steps=400,
            config="tiny",
            batch_size=16,
            lr=3e-3,
            finetune_epochs=30,
            min_nonzero=DEMO_MIN_NONZERO,
        )
    if gpu:
        return dict(
            n_genes=None,
            steps=2000,
            config="small",
            batch_size=16,
            lr=1e-3,
            finetune_epochs=30,
            min_nonzero=DEFAULT_MIN_NONZERO,
        )
    return dict(
        n_genes=1024,
        steps=300,
        config="tiny",
        batch_size=16,
        lr=3e-3,
        finetune_epochs=30,
        min_nonzero=DEFAULT_MIN_NONZERO,
    )


def run_demo(
    out,
    *,
    archs4: str | None = None,
    gdc: str | None = None,
    sample_sheet: str | None = None,
    label: str | None = None,
    search: str | None = None,
    search_field: str | None = None,
    n_genes: int | None = -1,
    steps: int | None = None,
    config=None,
    batch_size: int | None = None,
    lr: float | None = None,
    finetune_epochs: int | None = None,
    n_splits: int = 5,
    device=None,
    seed: int = 0,
    seeds: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> DemoResult:
    """Run preprocess → gene subset → pretrain → evaluate, writing everything under ``out``.

    Parameters
    ----------
    out : output directory: ``corpus/`` (preprocessed), ``corpus_genes/`` (gene subset),
        ``pretrain/`` (pretraining output, with the exported checkpoint), ``report/``.
    archs4 : an ARCHS4 gene-level ``.h5`` (optionally ``search`` / ``search_field``), or
    gdc, sample_sheet : a GDC STAR-Counts directory and its sample sheet; default: the
        bundled GEUVADIS demo.
    label : metadata field to classify (default ``sex`` for the bundled data; required
        otherwise, e.g. ``"Project ID"`` for TCGA).
    n_genes : keep the N most variable genes; ``None`` keeps all; ``-1`` = the default.
    steps, config, batch_size, lr : pretraining (``config``: preset name, BulkFormerConfig or
        JSON path); ``None`` = the defaults of :func:`demo_defaults`.
    finetune_epochs : most epochs of the cross-validated fine-tuning (it stops earlier when
        its validation loss stops falling; 0 skips it).
    device : torch device (default: CUDA when available).
    seed, seeds : pretraining and evaluation are repeated for ``seeds`` seeds ``seed``,
        ``seed + 1``, …, and the report gives mean ± std over them (default: 3 for the bundled
        data, 1 otherwise). The corpus (and its splits) is built once, with ``seed``.
    """
    import torch

    from ..data.archs4 import ARCHS4Source
    from ..data.corpus import build_corpus
    from ..data.derive import derive_corpus
    from ..train import pretrain
    from .report import evaluate

    bundled = archs4 is None and gdc is None
    if archs4 is not None and gdc is not None:
        raise ValueError("give --archs4 or --gdc, not both")
    if not bundled and not label:
        raise ValueError("--label FIELD is needed with --archs4 / --gdc (the class to predict)")
    gpu = (device is None and torch.cuda.is_available()) or str(device or "").startswith("cuda")
    d = demo_defaults(bundled=bundled, gpu=gpu)
    n_genes = d["n_genes"] if n_genes == -1 else n_genes
    steps = d["steps"] if steps is None else steps
    config = d["config"] if config is None else config
    batch_size = d["batch_size"] if batch_size is None else batch_size
    lr = d["lr"] if lr is None else lr
    finetune_epochs = d["finetune_epochs"] if finetune_epochs is None else finetune_epochs
    label = label or "sex"

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty (pass --overwrite)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    # 1. preprocess
    if bundled:
        from ..data.demo import demo_path

        source, title = ARCHS4Source(demo_path()), "bundled GEUVADIS demo (85 samples)"
    elif archs4 is not None:
        kw = {k: v for k, v in (("search", search), ("search_field", search_field)) if v}
        source, title = ARCHS4Source(archs4, **kw), f"ARCHS4 {archs4}"
    else:
        if not sample_sheet:
            raise ValueError("--gdc needs --sample-sheet (the GDC sample sheet TSV)")
        from ..data.gdc import GDCSource

        source, title = GDCSource(gdc, sample_sheet=sample_sheet), f"GDC {gdc}"
    log.info("demo: preprocessing %s", title)
    if hasattr(source, "label_column"):  # GDC: the sample sheet's "Project ID" → cancer_type
        label = source.label_column(label)
    corpus = build_corpus(
        source,
        out / "corpus",
        label=label,
        min_nonzero=d["min_nonzero"],
        splits=(0.8, 0.1, 0.1),
        seed=seed,
        progress=progress,
    )
    timings["preprocess"] = time.perf_counter() - t0

    # 2. gene subset
    t = time.perf_counter()
    if n_genes is not None and n_genes < corpus.n_genes:
        corpus = derive_corpus(corpus, out / "corpus_genes", n_genes=n_genes, overwrite=True)
    timings["gene_subset"] = time.perf_counter() - t
    log.info("demo: %d samples × %d genes", len(corpus), corpus.n_genes)

    n_seeds = (3 if bundled else 1) if seeds is None else seeds
    if n_seeds < 1:
        raise ValueError(f"seeds = {n_seeds}: need at least 1")
    seed_list = [seed + i for i in range(n_seeds)]
    timings["pretrain"] = timings["evaluate"] = 0.0
    reports, runs = [], []
    for i, s in enumerate(seed_list):
        # 3. pretrain
        t = time.perf_counter()
        log.info("demo: seed %d (%d of %d): pretraining", s, i + 1, n_seeds)
        res = pretrain(
            str(corpus.path),
            str(out / ("pretrain" if i == 0 else f"pretrain-seed{s}")),
            config=config,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=s,
            device=device,
            progress=progress,
        )
        runs.append(res)
        timings["pretrain"] += time.perf_counter() - t

        # 4. evaluate
        t = time.perf_counter()
        rep = evaluate(
            Path(res.pretrained),
            corpus,
            label="label",
            out=out / "report" / f"seed-{s}",
            n_splits=n_splits,
            seed=s,
            finetune=finetune_epochs > 0,
            finetune_epochs=max(finetune_epochs, 1),
            plots=i == 0,
            batch_size=batch_size,
            device=device,
            progress=progress,
            title=f"BulkFormer demo, seed {s} — {title}, {corpus.n_genes} genes, {steps} steps",
        )
        reports.append(rep)
        timings["evaluate"] += time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    cls, imp, cls_raw, imp_raw = aggregate_seeds(reports, seed_list)
    result = DemoResult(
        out,
        Path(corpus.path),
        Path(runs[0].pretrained),
        reports[0],
        timings,
        cls,
        imp,
        tuple(seed_list),
        reports,
    )
    _write_demo_report(
        result,
        cls_raw,
        imp_raw,
        runs,
        title=f"BulkFormer demo — {title}",
        setup={
            "data": f"{title}: {len(corpus)} samples × {corpus.n_genes} genes (the most variable)",
            "label": f"{label} ({n_splits}-fold stratified, the same folds for every method)",
            "model": f"{config if isinstance(config, str) else 'custom'} preset, {steps} "
            f"pretraining steps, batch {batch_size}, LR {lr}",
            "seeds": ", ".join(map(str, seed_list)),
            "fine-tuning": f"at most {finetune_epochs} epochs, early stopping (patience 3)"
            if finetune_epochs > 0
            else "skipped",
        },
    )
    return result


def aggregate_seeds(reports, seeds):
    """Display tables (mean ± std over seeds; over folds / masks for a single seed) and the
    raw per-seed tables (classification: method × seed rows; imputation likewise)."""
    from .benchmark import format_mean_std, pretty_classification, pretty_imputation

    cls_raw = pd.concat(
        [r.classification.assign(seed=s) for r, s in zip(reports, seeds)]
    ).reset_index()
    imp_raw = None
    if reports[0].imputation is not None:
        imp_raw = pd.concat(
            [r.imputation.assign(seed=s) for r, s in zip(reports, seeds)]
        ).reset_index()
    if len(reports) == 1:
        cls = pretty_classification(reports[0].classification)
        imp = None if imp_raw is None else pretty_imputation(reports[0].imputation)
        return cls, imp, cls_raw, imp_raw

    def over_seeds(raw, cols):
        order = list(dict.fromkeys(raw["method"]))
        g = raw.groupby("method", sort=False)
        out = pd.DataFrame(index=pd.Index(order, name="method"))
        for c, name in cols:
            m, sd = g[c].mean(), g[c].std(ddof=0)
            out[name] = [format_mean_std(m[k], sd[k]) for k in order]
        return out

    first = reports[0].classification
    cls = over_seeds(
        cls_raw,
        [("f1_weighted", "weighted F1"), ("f1_macro", "macro F1"), ("accuracy", "accuracy")],
    )
    for c in ("classifier", "features"):
        if c in first:
            cls.insert(0, c, first[c].reindex(cls.index).to_numpy())
    imp = None
    if imp_raw is not None:
        imp = over_seeds(
            imp_raw,
            [
                ("pearson_r", "r (log1p)"),
                ("pearson_r_z", "r_z"),
                ("mse_z", "MSE (z)"),
                ("mse", "MSE (log1p)"),
            ],
        )
    return cls, imp, cls_raw, imp_raw


def _write_demo_report(result: DemoResult, cls_raw, imp_raw, runs, *, title, setup) -> None:
    """OUT/report/report.md and .html: the demo's notes, the tables over seeds, the figure."""
    from .report import (
        html_head,
        html_table,
        markdown_inline_html,
        markdown_paragraph_html,
        markdown_table,
    )

    d = result.out / "report"
    first = result.report
    fig = first.out / "projections.png"
    if fig.exists():
        shutil.copyfile(fig, d / "projections.png")
    cls_raw.to_csv(d / "classification_seeds.csv", index=False)
    if imp_raw is not None:
        imp_raw.to_csv(d / "imputation_seeds.csv", index=False)
    n = len(result.seeds)
    over = f"{n} seeds (each: pretraining and evaluation)" if n > 1 else "folds"
    notes = [DEMO_NOTES[0], "\n".join(DEMO_NOTES[1:]).format(n=first.info["n_samples"])]
    pre = pd.DataFrame(
        [
            {"seed": s, "val MSE (z)": r.val_mse, "gene-mean baseline": _baseline(r)}
            for s, r in zip(result.seeds, runs)
        ]
    ).set_index("seed")
    setup_df = pd.DataFrame([{"": k, "value": v} for k, v in setup.items()]).set_index("")
    t = pd.Series(result.timings, name="seconds").rename_axis("step").to_frame()
    st = first.info.get("imputation") or {}
    cls_txt = (
        f"Weighted F1, macro F1 and accuracy: mean ± std over {over}. `rf_bulkformer` is "
        "BulkFormer's published protocol (random forest on PCA(50) of the frozen sample "
        "embeddings); `linear_probe`: logistic regression on them; `finetune`: the encoder "
        "and a linear head trained until the loss on a validation split of the training fold "
        "stops falling; the rest are baselines on the z-scored log1p TPM of the same genes. "
        "Every method of a seed uses the same folds (`seed-*/folds.tsv`)."
    )
    imp_txt = (
        f"Masked genes of held-out samples (15% of each sample's genes, "
        f"{st.get('n_masks', 1)} masks per seed), the same positions for every method; mean "
        f"± std over {over if n > 1 else 'masks'}. Baselines fitted on the training samples "
        "only: gene mean, kNN, and a linear imputer (`pca`: top principal components fitted "
        "to each sample's unmasked genes), their k chosen on a validation split of the "
        "training samples. r (log1p) is mostly the spread of the gene means (the gene-mean "
        "row gets it free); r_z, on the z scale, is the part a model has to predict."
    )
    md = [f"# {title}", "", *[x + "\n" for x in notes]]
    md += ["## Classification", "", cls_txt, "", markdown_table(result.classification), ""]
    if result.imputation is not None:
        md += ["## Imputation", "", imp_txt, "", markdown_table(result.imputation), ""]
    md += [
        "## Pretraining",
        "",
        "Masked-gene validation MSE (z) at the end of pretraining, beside the gene-mean "
        "prediction on the same positions.",
        "",
        markdown_table(pre),
        "",
    ]
    if first.clustering is not None:
        md += ["## Clustering (first seed)", "", markdown_table(first.clustering), ""]
    if fig.exists():
        md += ["## UMAP and t-SNE (first seed)", "", "![projections](projections.png)", ""]
    md += ["## Setup", "", markdown_table(setup_df), ""]
    md += [
        "Per-seed reports, CSV tables and fold files: "
        + ", ".join(f"[seed {s}](seed-{s}/report.md)" for s in result.seeds),
        "",
    ]
    md += ["## Timings", "", markdown_table(t, ".1f"), ""]
    (d / "report.md").write_text("\n".join(md))

    parts = [html_head(title), f"<h1>{markdown_inline_html(title)}</h1>"]
    parts += [markdown_paragraph_html(x) for x in notes]
    parts += ["<h2>Classification</h2>", f"<p>{markdown_inline_html(cls_txt)}</p>"]
    parts += [html_table(result.classification)]
    if result.imputation is not None:
        parts += ["<h2>Imputation</h2>", f"<p>{markdown_inline_html(imp_txt)}</p>"]
        parts += [html_table(result.imputation)]
    parts += ["<h2>Pretraining</h2>", html_table(pre)]
    if first.clustering is not None:
        parts += ["<h2>Clustering (first seed)</h2>", html_table(first.clustering)]
    if fig.exists():
        parts += ["<h2>UMAP and t-SNE (first seed)</h2>"]
        parts += ["<img src='projections.png' width='100%'>"]
    parts += ["<h2>Setup</h2>", html_table(setup_df)]
    links = ", ".join(f"<a href='seed-{s}/report.html'>seed {s}</a>" for s in result.seeds)
    parts += [f"<p>Per-seed reports: {links}</p>"]
    parts += ["<h2>Timings</h2>", html_table(t, "{:.1f}"), "</body></html>"]
    (d / "report.html").write_text("\n".join(parts))


def _baseline(run):
    """The gene-mean validation baseline of a pretraining run (from its exported metadata)."""
    import json

    p = Path(run.pretrained) / "bulkformer.json" if run.pretrained else None
    if p is None or not p.is_file():
        return None
    return (json.loads(p.read_text()).get("training") or {}).get("val_gene_mean_baseline")
