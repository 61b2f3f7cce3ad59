"""``bulkformer demo``: the whole pipeline end to end, on the bundled data or a user's corpus.

::

    preprocess (counts → log1p TPM → z, splits stratified by the label)
      → keep the N most variable genes (CPU attention over 20k genes is ~30 s/sample)
      → pretrain a small BulkFormer (bulkformer.train.pretrain)
      → evaluate: embed, linear probe + fine-tuning vs baselines, imputation, UMAP/t-SNE
      → report (Markdown + HTML + CSV + PNG) in OUT/report

Defaults: the bundled GEUVADIS file (85 samples, label ``sex``), 256 genes, the ``tiny``
preset, 150 steps — a few minutes on 2 CPU cores. With ``--archs4`` / ``--gdc`` the defaults
scale up (all genes, 2,000 steps, the ``small`` preset on a GPU; 1,024 genes and 300 steps on
a CPU).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["DemoResult", "run_demo", "demo_defaults"]


@dataclass
class DemoResult:
    """Paths and numbers of one demo run."""

    out: Path
    corpus: Path
    checkpoint: Path
    report: object  # bulkformer.eval.report.EvalReport
    timings: dict = field(default_factory=dict)

    def summary(self) -> str:
        """The metric tables and the report path, as printed by ``bulkformer demo``."""
        from .report import markdown_table

        r = self.report
        cols = [c for c in ("f1_weighted", "f1_macro", "accuracy") if c in r.classification]
        lines = ["classification (mean over folds):", markdown_table(r.classification[cols])]
        if r.imputation is not None:
            lines += [
                "imputation (masked genes of held-out samples):",
                markdown_table(r.imputation[["pearson_r", "mse", "pearson_r_z", "mse_z"]]),
            ]
        if r.clustering is not None:
            lines += ["clustering:", markdown_table(r.clustering)]
        t = " · ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
        lines += [f"time: {t}", f"report: {r.markdown}", f"        {r.html}"]
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
            finetune_epochs=5,
            min_nonzero=DEMO_MIN_NONZERO,
        )
    if gpu:
        return dict(
            n_genes=None,
            steps=2000,
            config="small",
            batch_size=16,
            lr=1e-3,
            finetune_epochs=5,
            min_nonzero=DEFAULT_MIN_NONZERO,
        )
    return dict(
        n_genes=1024,
        steps=300,
        config="tiny",
        batch_size=16,
        lr=3e-3,
        finetune_epochs=5,
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
    finetune_epochs : epochs of the cross-validated fine-tuning (0 skips it).
    device : torch device (default: CUDA when available).
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

    # 3. pretrain
    t = time.perf_counter()
    res = pretrain(
        str(corpus.path),
        str(out / "pretrain"),
        config=config,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        progress=progress,
    )
    checkpoint = Path(res.pretrained)
    timings["pretrain"] = time.perf_counter() - t

    # 4. evaluate + report
    t = time.perf_counter()
    rep = evaluate(
        checkpoint,
        corpus,
        label="label",
        out=out / "report",
        n_splits=n_splits,
        seed=seed,
        finetune=finetune_epochs > 0,
        finetune_epochs=max(finetune_epochs, 1),
        batch_size=batch_size,
        device=device,
        progress=progress,
        title=f"BulkFormer demo — {title}, {corpus.n_genes} genes, {steps} steps",
    )
    timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    return DemoResult(out, Path(corpus.path), checkpoint, rep, timings)
