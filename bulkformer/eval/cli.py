"""``bulkformer embed | probe | finetune | evaluate | demo``: thin parsing, then the eval API."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_EPILOG = """\
what it does (each step timed):
  preprocess the data → keep the N most variable genes → pretrain a small BulkFormer →
  embed → linear probe, random forest and fine-tuning (early stopping) vs logistic
  regression / PCA / random-forest baselines (same folds) → imputation vs gene mean, kNN and a
  PCA imputer (same masked positions) → 3 seeds (bundled data), mean ± std → UMAP / t-SNE →
  Markdown + HTML report in OUT/report

examples:
  bulkformer demo --out demo_run                     # bundled GEUVADIS, label sex, ~minutes
  bulkformer demo --archs4 human_gene_v2.2.h5 --search liver --search-field source_name_ch1 \\
      --label source_name_ch1 --out liver_run
  bulkformer demo --gdc gdc_download/ --sample-sheet gdc_sample_sheet.tsv \\
      --label "Project ID" --out tcga_run
"""


BENCHMARK_EPILOG = """\
examples:
  bulkformer benchmark RUN/pretrained --corpus tcga --label "Project ID" --out bench_tcga
  bulkformer benchmark RUN/pretrained --input samples.h5ad --label tissue --folds 5 --out b
  bulkformer benchmark RUN/pretrained --corpus tcga --label label --folds-file b/folds.tsv \\
      --out b2                                            # the same folds again
"""


def _data_args(p, *, label: bool, positional_checkpoint: bool = False) -> None:
    g = p.add_argument_group("data")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="FILE.h5ad|DIR", help="AnnData file or corpus directory")
    src.add_argument("--corpus", metavar="DIR", help="corpus directory (bulkformer preprocess)")
    g.add_argument(
        "--values",
        choices=["counts", "tpm", "log1p_tpm", "z"],
        default="counts",
        help=".h5ad: what the matrix holds (default counts; z = already standardized with the "
        "checkpoint's statistics)",
    )
    g.add_argument("--layer", help=".h5ad: read this layer instead of X")
    g.add_argument("--gene-column", metavar="COL", help=".h5ad: var column with Ensembl IDs")
    g.add_argument(
        "--min-gene-overlap",
        type=float,
        default=0.5,
        metavar="F",
        help=".h5ad: refuse an input covering fewer than this fraction of the checkpoint's "
        "reference genes (default 0.5; 0 accepts any non-empty overlap)",
    )
    if label:
        g.add_argument(
            "--label",
            required=True,
            metavar="COL",
            help="label column (obs column of an .h5ad; 'label' for a corpus built with --label)",
        )
    m = p.add_argument_group("model")
    if positional_checkpoint:
        p.add_argument(
            "checkpoint", metavar="CHECKPOINT", help="pretrained directory (RUN/pretrained)"
        )
    else:
        m.add_argument("--checkpoint", required=True, metavar="DIR", help="pretrained directory")
    m.add_argument(
        "--how",
        choices=["sample", "mean", "max"],
        default=None,
        help="sample embedding: the sample vector, or mean/max pooling of gene embeddings "
        "(default: the checkpoint's config.pooling)",
    )
    m.add_argument("--batch-size", type=_positive_int, default=16, metavar="N")
    m.add_argument("--device", help="torch device (default: cuda when available)")
    m.add_argument("--no-progress", action="store_true", help="no progress bars")


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number ≥ 1")
    return n


def _cv_args(p) -> None:
    p.add_argument("--folds", type=int, default=5, metavar="K", help="stratified K-fold (5)")
    p.add_argument("--seed", type=int, default=0)


def _open(args):
    """(data, values): an AnnData read from --input FILE, or a corpus directory."""
    path = args.corpus or args.input
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if p.is_dir():
        from ..data.corpus import Corpus

        return Corpus.open(p)
    import anndata as ad

    return ad.read_h5ad(p)


def _kw(args) -> dict:
    return dict(
        values=args.values,
        layer=args.layer,
        gene_column=args.gene_column,
        min_gene_overlap=args.min_gene_overlap,
        how=args.how,
        batch_size=args.batch_size,
        device=args.device,
    )


def add_parser(subparsers) -> None:
    e = subparsers.add_parser(
        "embed",
        help="sample embeddings of an .h5ad or corpus with a pretrained BulkFormer",
        description="Align, normalize and standardize the input like the checkpoint's corpus, "
        "then write (N, D) sample embeddings.",
        epilog="examples:\n  bulkformer embed --checkpoint ckpt --input samples.h5ad --out emb.h5ad\n"
        "  bulkformer embed --checkpoint ckpt --corpus corpus --out emb.npy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _data_args(e, label=False)
    e.add_argument(
        "--out",
        required=True,
        metavar="FILE.npy|FILE.h5ad",
        help=".npy: the (N, D) array; .h5ad: the input's obs with obsm[--key-added]",
    )
    e.add_argument("--key-added", default="X_bulkformer", help="obsm key (X_bulkformer)")
    e.add_argument(
        "--parts",
        metavar="DIR",
        help="commit chunks of embeddings here and resume from them (default under torchrun: "
        "OUT.parts); each torchrun rank embeds a contiguous shard",
    )
    e.add_argument("--chunk-rows", type=int, default=1024, metavar="N", help="samples per chunk")
    e.set_defaults(func=run_embed)

    for name, helptext in (
        ("probe", "linear probe of embeddings vs logistic-regression and PCA baselines"),
        ("finetune", "cross-validated fine-tuning vs the same baselines"),
    ):
        p = subparsers.add_parser(name, help=helptext, description=helptext)
        _data_args(p, label=True)
        _cv_args(p)
        if name == "finetune":
            p.add_argument(
                "--epochs", type=int, default=50, help="most epochs (50; early stopping)"
            )
            p.add_argument(
                "--patience",
                type=int,
                default=3,
                help="stop after this many epochs without a lower validation loss (3)",
            )
            p.add_argument("--lr", type=float, default=1e-2, help="head LR (encoder: 0.1×)")
        p.add_argument("--out", metavar="FILE.csv", help="also write the metric table as CSV")
        p.set_defaults(func=run_probe if name == "probe" else run_finetune)

    v = subparsers.add_parser(
        "evaluate",
        help="all downstream checks of a checkpoint, written as a Markdown/HTML report",
        description="Embed, linear probe and fine-tune vs baselines, impute, cluster and plot "
        "UMAP/t-SNE; writes report.md, report.html, CSV tables and figures to --out.",
    )
    _data_args(v, label=True)
    _cv_args(v)
    v.add_argument("--out", required=True, metavar="REPORT_DIR")
    v.add_argument(
        "--epochs", type=int, default=50, help="fine-tuning: most epochs (50; early stopping)"
    )
    v.add_argument("--no-finetune", action="store_true")
    v.add_argument("--no-impute", action="store_true")
    v.add_argument("--no-plots", action="store_true")
    v.set_defaults(func=run_evaluate)

    b = subparsers.add_parser(
        "benchmark",
        help="a checkpoint vs strong baselines on a labelled corpus or .h5ad (tables + folds)",
        description="BulkFormer's protocol (random forest on PCA of the frozen embeddings, "
        "stratified K-fold, weighted F1) beside a linear probe, logistic regression and PCA + "
        "LR / RF on log1p TPM, all on the same folds; imputation vs gene mean, kNN and a PCA "
        "imputer on the same masked positions. Writes benchmark.tsv/.md, imputation.tsv, "
        "per_fold.tsv, folds.tsv and info.json to --out.",
        epilog=BENCHMARK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _data_args(b, label=True, positional_checkpoint=True)
    b.add_argument("--folds", type=int, default=10, metavar="K", help="stratified K-fold (10)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--folds-file", metavar="TSV", help="reuse the folds of a folds.tsv")
    b.add_argument("--out", required=True, metavar="DIR")
    b.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    b.add_argument("--finetune", action="store_true", help="also fine-tune (slow on a CPU)")
    b.add_argument("--epochs", type=int, default=50, help="fine-tuning: most epochs (50)")
    b.add_argument("--patience", type=int, default=3, help="fine-tuning: early stopping (3)")
    b.add_argument("--no-impute", action="store_true", help="skip the imputation comparison")
    b.add_argument(
        "--impute-samples", type=int, default=500, metavar="N", help="imputed samples (500)"
    )
    b.add_argument("--rf-trees", type=int, default=500, metavar="N", help="trees per forest")
    b.add_argument("--jobs", type=int, metavar="N", help="random-forest threads (default 1)")
    b.set_defaults(func=run_benchmark_cmd)

    d = subparsers.add_parser(
        "demo",
        help="the whole pipeline end to end (bundled data, or an ARCHS4 / GDC input)",
        description="Preprocess, pretrain a small model, evaluate it against baselines and "
        "write a report — on the bundled 85-sample GEUVADIS file by default.",
        epilog=DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("--out", required=True, metavar="DIR")
    d.add_argument("--archs4", metavar="FILE.h5", help="ARCHS4 gene-level file instead")
    d.add_argument("--search", metavar="REGEX", help="ARCHS4: keep samples matching REGEX")
    d.add_argument("--search-field", metavar="FIELD", help="ARCHS4: field searched by --search")
    d.add_argument("--gdc", metavar="DIR", help="GDC STAR-Counts directory instead")
    d.add_argument("--sample-sheet", metavar="TSV", help="GDC sample sheet (with --gdc)")
    d.add_argument("--label", metavar="FIELD", help="field to classify (bundled: sex)")
    d.add_argument(
        "--genes",
        type=int,
        default=-1,
        metavar="N",
        help="keep the N most variable genes (0 = all; default 512 bundled, 1024 "
        "CPU, all on a GPU)",
    )
    d.add_argument("--steps", type=int, help="pretraining steps (400 bundled; 300 CPU; 2000 GPU)")
    d.add_argument("--config", help="model preset or config JSON (tiny; small on a GPU)")
    d.add_argument("--batch-size", type=int, metavar="N")
    d.add_argument("--lr", type=float, help="pretraining peak LR (3e-3 on CPU, 1e-3 on a GPU)")
    d.add_argument(
        "--epochs",
        type=int,
        help="fine-tuning: most epochs (30; early stopping; 0 skips fine-tuning)",
    )
    d.add_argument("--folds", type=int, default=5, metavar="K")
    d.add_argument("--device", help="torch device (default: cuda when available)")
    d.add_argument("--seed", type=int, default=0, help="first seed (0)")
    d.add_argument(
        "--seeds",
        type=int,
        metavar="N",
        help="repeat pretraining + evaluation for N seeds, report mean ± std (3 bundled, else 1)",
    )
    d.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=run_demo)


def run_benchmark_cmd(args) -> int:
    from .benchmark import pretty_classification, pretty_imputation, run_benchmark
    from .report import markdown_table

    data = _open(args)
    res = run_benchmark(
        args.checkpoint,
        data,
        label=args.label,
        out=args.out,
        n_splits=args.folds,
        seed=args.seed,
        folds_file=args.folds_file,
        **_kw(args),
        finetune=args.finetune,
        finetune_epochs=args.epochs,
        patience=args.patience,
        impute=not args.no_impute,
        impute_samples=args.impute_samples,
        rf_trees=args.rf_trees,
        n_jobs=args.jobs,
        overwrite=args.overwrite,
        progress=_progress(args),
        where=args.corpus or args.input,
    )
    print(markdown_table(pretty_classification(res.classification)))
    if res.imputation is not None:
        print(markdown_table(pretty_imputation(res.imputation)))
    print(f"wrote {res.out}/benchmark.md, benchmark.tsv, folds.tsv")
    return 0


def _progress(args) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def run_embed(args) -> int:
    import numpy as np

    from ..data.corpus import Corpus
    from .embed import embed

    data = _open(args)
    out = Path(args.out)
    if out.suffix not in (".npy", ".h5ad"):
        raise ValueError(f"--out {out}: expected a .npy or .h5ad file name")
    kw = _kw(args)
    from .embed_dist import run_embed_cli, under_torchrun

    if args.parts or under_torchrun():  # sharded over torchrun's ranks, resumable
        return run_embed_cli(args, data, kw)
    if isinstance(data, Corpus):
        emb = embed(data, args.checkpoint, progress=_progress(args), **kw)
        if out.suffix == ".h5ad":
            import anndata as ad

            obs = data.samples.set_index("sample_id")
            obs.index = obs.index.astype(str)
            adata = ad.AnnData(obs=obs, obsm={args.key_added: emb})
            adata.uns["bulkformer"] = {
                "model": args.checkpoint,
                "corpus": str(data.path),
                "pooling": args.how,
            }
            adata.write_h5ad(out)
        else:
            np.save(out, emb)
    else:
        embed(data, args.checkpoint, key_added=args.key_added, progress=_progress(args), **kw)
        emb = data.obsm[args.key_added]
        if out.suffix == ".h5ad":
            data.write_h5ad(out)
        else:
            np.save(out, emb)
    print(f"wrote {emb.shape[0]:,} × {emb.shape[1]} embeddings to {out}")
    return 0


def _print_table(df, out) -> None:
    from .report import markdown_table

    cols = [c for c in df.columns if c != "seconds"]
    print(markdown_table(df[cols]))
    if out:
        df.to_csv(out)
        print(f"wrote {out}")


def run_probe(args) -> int:
    from .probe import probe, results_table

    data = _open(args)
    res = probe(
        data,
        args.checkpoint,
        args.label,
        n_splits=args.folds,
        seed=args.seed,
        progress=_progress(args),
        **_kw(args),
    )
    _print_table(results_table(res), args.out)
    return 0


def run_finetune(args) -> int:
    from .embed import prepare_input, resolve_pretrained
    from .finetune import finetune_cv
    from .probe import baselines, labels_of, make_folds, results_table

    data = _open(args)
    kw = _kw(args)
    pre = resolve_pretrained(args.checkpoint)
    prep = prepare_input(
        data,
        pre,
        values=kw["values"],
        layer=kw["layer"],
        gene_column=kw["gene_column"],
        min_gene_overlap=kw["min_gene_overlap"],
    )
    y = labels_of(prep, args.label)
    folds = make_folds(y, n_splits=args.folds, seed=args.seed)
    res = [
        finetune_cv(
            prep,
            pre.model,
            y,
            folds,
            how=args.how,
            epochs=args.epochs,
            patience=args.patience,
            lr=args.lr,
            batch_size=args.batch_size,
            device=args.device,
            seed=args.seed,
            progress=_progress(args),
        )
    ]
    res += baselines(prep.z(), y, folds, seed=args.seed)
    _print_table(results_table(res), args.out)
    return 0


def run_evaluate(args) -> int:
    from .report import evaluate

    data = _open(args)
    kw = _kw(args)
    rep = evaluate(
        args.checkpoint,
        data,
        label=args.label,
        out=args.out,
        n_splits=args.folds,
        seed=args.seed,
        finetune=not args.no_finetune,
        finetune_epochs=args.epochs,
        impute=not args.no_impute,
        plots=not args.no_plots,
        progress=_progress(args),
        **kw,
    )
    _print_table(rep.classification, None)
    if rep.imputation is not None:
        _print_table(rep.imputation, None)
    print(f"report: {rep.markdown}\n        {rep.html}")
    return 0


def run_demo(args) -> int:
    from .demo import run_demo as demo

    try:
        res = _demo(demo, args)
    except RuntimeError as e:  # an unreadable input chunk, a non-finite loss, ...
        print(f"bulkformer demo: error: {e}", file=sys.stderr)
        return 1
    print(res.summary())
    return 0


def _demo(demo, args):
    return demo(
        args.out,
        archs4=args.archs4,
        gdc=args.gdc,
        sample_sheet=args.sample_sheet,
        label=args.label,
        search=args.search,
        search_field=args.search_field,
        n_genes=None if args.genes == 0 else args.genes,
        steps=args.steps,
        config=args.config,
        batch_size=args.batch_size,
        lr=args.lr,
        finetune_epochs=args.epochs,
        n_splits=args.folds,
        device=args.device,
        seed=args.seed,
        seeds=args.seeds,
        overwrite=args.overwrite,
        progress=_progress(args),
    )
