"""``bulkformer preprocess``, ``bulkformer corpus info|export`` and ``bulkformer merge``.

Thin: parse arguments, open the sources, call :func:`bulkformer.data.corpus.build_corpus` /
:func:`~bulkformer.data.corpus.merge_parts`, print a summary.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .corpus.plan import DEFAULT_MIN_NONZERO
from .demo import DEMO_MIN_NONZERO

log = logging.getLogger(__name__)

PREPROCESS_EPILOG = """\
what it does:
  reads every input sample once: counts → TPM (gene lengths) → log1p, aligned to the gene
  reference (missing genes flagged), drops samples with fewer than --min-nonzero non-zero
  genes, assigns a seeded train/val/test split (stratified by --label), computes per-gene
  mean/std over the training split (or takes them from --stats) and writes float16 z-scores.
  The build runs in OUT.partial and is renamed to OUT when done; if it is interrupted, run the
  same command again to continue where it stopped.

examples:
  # the bundled GEUVADIS demo (85 samples), split stratified by sex
  bulkformer preprocess --demo --label sex --out demo_corpus

  # all ARCHS4 samples whose tissue field mentions liver
  bulkformer preprocess --archs4 human_gene_v2.2.h5 --search liver \\
      --search-field source_name_ch1 --out liver_corpus

  # TCGA from the GDC, labelled by project (cancer type)
  bulkformer preprocess --gdc gdc_download/ --sample-sheet gdc_sample_sheet.tsv \\
      --label "Project ID" --out tcga_corpus

  # TPM with the exon lengths of your own annotation; no 1 kb guess for genes it lacks
  bulkformer genes lengths --gtf gencode.v36.annotation.gtf.gz --out lengths.tsv
  bulkformer preprocess --gdc gdc_download/ --sample-sheet gdc_sample_sheet.tsv \\
      --lengths lengths.tsv --fallback-length none --out tcga_corpus

  # BulkFormer's PreBULK (already log1p TPM), standardized like another corpus
  bulkformer preprocess --h5ad PreBULK.h5ad --values log1p_tpm --stats pretrain_corpus \\
      --out prebulk_corpus

  # on 4 machines, then join the parts
  bulkformer preprocess --archs4 human_gene_v2.2.h5 --shard 0/4 --out part0   # … 1/4, 2/4, 3/4
  bulkformer merge part0 part1 part2 part3 --out corpus

  bulkformer corpus info demo_corpus
"""


def add_parser(subparsers) -> None:
    from ..cli import int_at_least

    p = subparsers.add_parser(
        "preprocess",
        help="build a standardized training corpus from ARCHS4 / GDC / .h5ad inputs",
        description="Build a standardized, gene-aligned training corpus (float16 z-scores "
        "on disk, with splits, statistics and a missing-gene mask) from one or more inputs.",
        epilog=PREPROCESS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("inputs (one or more; sample IDs must be unique across them)")
    g.add_argument(
        "--archs4",
        action="append",
        default=[],
        metavar="FILE.h5",
        help="ARCHS4 gene-level HDF5 file (repeatable)",
    )
    g.add_argument(
        "--search", metavar="REGEX", help="ARCHS4: keep samples whose --search-field matches REGEX"
    )
    g.add_argument(
        "--search-field", metavar="FIELD", help="ARCHS4: meta/samples field searched by --search"
    )
    g.add_argument(
        "--samples",
        nargs="+",
        metavar="GSM",
        help="ARCHS4: keep only these sample IDs (GEO accessions)",
    )
    g.add_argument(
        "--archs4-layout",
        choices=["auto", "genes-by-samples", "samples-by-genes"],
        default="auto",
        help="ARCHS4: orientation of data/expression (default: decided from the lengths of "
        "meta/genes and meta/samples; a square matrix they cannot tell apart must be stated)",
    )
    g.add_argument(
        "--gdc", metavar="DIR", help="directory of GDC 'STAR - Counts' files (needs --sample-sheet)"
    )
    g.add_argument("--sample-sheet", metavar="TSV", help="GDC sample sheet for --gdc")
    g.add_argument(
        "--h5ad",
        action="append",
        default=[],
        metavar="FILE",
        help="AnnData file, samples × genes (repeatable)",
    )
    g.add_argument("--layer", help=".h5ad: read this layer instead of X")
    g.add_argument(
        "--gene-column",
        metavar="COL",
        help=".h5ad: var column with Ensembl gene IDs (default: var_names)",
    )
    g.add_argument(
        "--values",
        choices=["counts", "tpm", "log1p_tpm"],
        default="counts",
        help=".h5ad: what the matrix holds (default: counts)",
    )
    g.add_argument(
        "--demo",
        action="store_true",
        help="the bundled GEUVADIS demo file (85 samples, ARCHS4 format)",
    )
    o = p.add_argument_group("corpus")
    o.add_argument("--out", required=True, metavar="DIR", help="output corpus directory")
    o.add_argument(
        "--reference",
        metavar="REF.tsv",
        help="gene reference TSV (default: the embedded protein-coding reference)",
    )
    o.add_argument(
        "--lengths",
        metavar="TSV",
        help="gene lengths (bp) for TPM, columns gene_id and length (any biotype; e.g. from "
        "`bulkformer genes lengths --gtf`): used for every source gene instead of the embedded "
        "table",
    )
    o.add_argument(
        "--fallback-length",
        default="1000",
        metavar="BP|none",
        help="length given to reference genes that have none (default 1000); 'none' leaves "
        "them out of the TPM denominator and marks them missing (logged, and counted in the "
        "manifest's alignment report)",
    )
    o.add_argument(
        "--label",
        metavar="COL",
        help="sample metadata column to keep as the label; splits are stratified by it (GDC: "
        "a sample sheet column such as 'Project ID' or 'Sample Type')",
    )
    o.add_argument(
        "--min-nonzero",
        type=int_at_least(0),
        default=None,
        metavar="N",
        help=f"QC: drop samples with fewer non-zero genes (default: {DEFAULT_MIN_NONZERO}; "
        f"{DEMO_MIN_NONZERO} with --demo "
        "alone, whose file holds only the 10,101 genes its source ships)",
    )
    o.add_argument(
        "--splits",
        default="0.9,0.05,0.05",
        metavar="TRAIN,VAL,TEST",
        help="split fractions (default: 0.9,0.05,0.05)",
    )
    o.add_argument("--seed", type=int, default=0, help="split seed (default: 0)")
    o.add_argument(
        "--stats",
        metavar="STATS.npz|CORPUS",
        help="standardize with these statistics (another corpus or its stats.npz) "
        "instead of this corpus' training split",
    )
    o.add_argument(
        "--shard",
        metavar="i/n",
        help="write part i of n (sample ranges); join parts with `bulkformer merge`",
    )
    o.add_argument(
        "--threads", type=int_at_least(1), metavar="N", help="reader threads (default: all cores)"
    )
    o.add_argument(
        "--block-size",
        type=int_at_least(1),
        default=512,
        metavar="N",
        help="samples per block; memory grows with it (default: 512)",
    )
    o.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out (and discard an incompatible OUT.partial)",
    )
    _add_durable(o)
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_preprocess)

    m = subparsers.add_parser(
        "merge",
        help="join corpus parts written with `preprocess --shard i/n`",
        description="Join the parts of a sharded `bulkformer preprocess` into one corpus, "
        "identical to a single-machine build.",
        epilog="example:\n  bulkformer merge part0 part1 part2 part3 --out corpus",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("parts", nargs="+", metavar="PART", help="part directories (all n of them)")
    m.add_argument("--out", required=True, metavar="DIR", help="output corpus directory")
    m.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _add_durable(m)
    m.add_argument("--no-progress", action="store_true", help="no progress bars")
    m.set_defaults(func=run_merge)

    c = subparsers.add_parser("corpus", help="inspect or export a corpus")
    csub = c.add_subparsers(dest="corpus_command", metavar="ACTION")
    i = csub.add_parser("info", help="describe a corpus (or a corpus part)")
    i.add_argument("dir", metavar="DIR")
    i.set_defaults(func=run_info)
    e = csub.add_parser(
        "export",
        help="write corpus rows as an .h5ad (X = z-scores, layers['missing'])",
        epilog="examples:\n  bulkformer corpus export corpus --out val.h5ad --rows val\n"
        "  bulkformer corpus export corpus --out head.h5ad --rows 0:100",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("dir", metavar="DIR")
    e.add_argument("--out", required=True, metavar="FILE.h5ad")
    e.add_argument(
        "--rows",
        metavar="ROWS",
        help="START:STOP, comma-separated indices, or a split name (default: all)",
    )
    e.set_defaults(func=run_export)
    c.set_defaults(func=lambda args: c.print_help() or 2)


def _splits(text: str) -> tuple:
    try:
        fr = tuple(float(v) for v in text.split(","))
    except ValueError:
        fr = ()
    if len(fr) != 3:
        raise ValueError(f"--splits {text!r}: expected three fractions TRAIN,VAL,TEST")
    return fr


def parse_rows(text: str | None):
    """``None`` → all; ``"a:b"`` → slice; ``"1,5,7"`` → indices; ``"val"`` → split name."""
    import numpy as np

    if text is None:
        return None
    if text in ("train", "val", "test"):
        return text
    if ":" in text:
        a, _, b = text.partition(":")
        return slice(int(a) if a else None, int(b) if b else None)
    try:
        return np.array([int(v) for v in text.split(",")], dtype=np.int64)
    except ValueError:
        raise ValueError(
            f"--rows {text!r}: expected START:STOP, comma-separated indices or train/val/test"
        ) from None


def open_sources(args) -> list:
    """The inputs named on the command line, as ExpressionSources."""
    sources = []
    archs4_kw = {
        k: v
        for k, v in (
            ("search", args.search),
            ("search_field", args.search_field),
            ("samples", args.samples),
        )
        if v is not None
    }
    if args.demo:
        from .archs4 import ARCHS4Source
        from .demo import demo_path

        sources.append(ARCHS4Source(demo_path()))
    for f in args.archs4:
        from .archs4 import ARCHS4Source

        sources.append(ARCHS4Source(f, layout=args.archs4_layout, **archs4_kw))
    if archs4_kw and not args.archs4:
        raise ValueError("--search/--search-field/--samples select ARCHS4 samples: add --archs4")
    if args.gdc:
        if not args.sample_sheet:
            raise ValueError("--gdc needs --sample-sheet (the GDC sample sheet TSV)")
        from .gdc import GDCSource

        sources.append(GDCSource(args.gdc, sample_sheet=args.sample_sheet))
    for f in args.h5ad:
        from .h5ad import H5ADSource

        sources.append(
            H5ADSource(f, layer=args.layer, gene_column=args.gene_column, values=args.values)
        )
    if not sources:
        raise ValueError("no input: give --archs4, --gdc, --h5ad or --demo (see --help)")
    return sources


def resolve_label(sources, label: str | None) -> str | None:
    """``--label`` as a column of every source's sample table: a GDC sample sheet column
    (``"Project ID"``, as the GDC portal names it) is read from the column the GDC reader
    stores it in (``cancer_type``)."""
    if label is None:
        return None
    names = {getattr(s, "label_column", lambda x: x)(label) for s in sources}
    names.discard(label)
    if len(names) == 1:
        new = names.pop()
        if all(new in s.samples.columns for s in sources):
            log.info("--label %r: the GDC sample sheet column, read as %r", label, new)
            return new
    return label


def _add_durable(parser) -> None:
    parser.add_argument(
        "--durable",
        action="store_true",
        help="fsync the data at every progress commit, so that an unfinished build (and the "
        "result) survive a power failure or OS crash; slower: every byte goes to the disk while "
        "building. Without it a killed build still resumes exactly, but after a reboot an "
        "unfinished build starts over",
    )


def run_preprocess(args) -> int:
    from .corpus import build_corpus
    from .genes import GeneReference

    splits = _splits(args.splits)
    min_nonzero = args.min_nonzero
    if min_nonzero is None:
        demo_only = args.demo and not (args.archs4 or args.gdc or args.h5ad)
        min_nonzero = DEMO_MIN_NONZERO if demo_only else DEFAULT_MIN_NONZERO
    from .corpus.guard import check_out

    # before any input is opened; build_corpus checks again, under the output's lock
    inputs = [*args.archs4, *args.h5ad, args.gdc, args.sample_sheet, args.reference, args.stats]
    check_out(args.out, args.overwrite, inputs)
    reference = GeneReference.from_tsv(args.reference) if args.reference else None
    from .lengths import parse_fallback, with_lengths

    fallback = parse_fallback(args.fallback_length)
    sources = with_lengths(open_sources(args), args.lengths, fallback)
    label = resolve_label(sources, args.label)
    t0 = time.time()
    result = build_corpus(
        sources,
        args.out,
        reference,
        label=label,
        min_nonzero=min_nonzero,
        splits=splits,
        seed=args.seed,
        stats=args.stats,
        block_size=args.block_size,
        threads=args.threads,
        overwrite=args.overwrite,
        shard=args.shard,
        progress=not args.no_progress and sys.stderr.isatty(),
        durable=args.durable,
    )
    dt = time.time() - t0
    print(result.describe())
    n_in = result.manifest["rows"]["input"]
    print(f"  time      {dt:.1f} s, {n_in / max(dt, 1e-9):,.0f} samples/s")
    return 0


def run_merge(args) -> int:
    from .corpus import merge_parts

    corpus = merge_parts(
        args.parts,
        args.out,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        durable=args.durable,
    )
    print(corpus.describe())
    return 0


def run_info(args) -> int:
    import json
    from pathlib import Path

    from .corpus import Corpus, CorpusPart

    mf = Path(args.dir) / "manifest.json"
    kind = json.loads(mf.read_text()).get("kind") if mf.exists() else None
    obj = CorpusPart.open(args.dir) if kind == "part" else Corpus.open(args.dir)
    print(obj.describe())
    return 0


def run_export(args) -> int:
    from .corpus import Corpus

    corpus = Corpus.open(args.dir)
    adata = corpus.to_anndata(parse_rows(args.rows))
    adata.write_h5ad(args.out)
    print(f"wrote {adata.n_obs:,} × {adata.n_vars:,} to {args.out}")
    return 0
