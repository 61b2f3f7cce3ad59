"""``bulkformer esm-embed`` and ``bulkformer esm-align``: argument parsing, then the API."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run_align", "run_embed"]


def add_parser(subparsers) -> None:
    """Register ``esm-embed`` and ``esm-align`` on the ``bulkformer`` subparsers."""
    p = subparsers.add_parser(
        "esm-embed",
        help="ESM2 gene identity embeddings aligned to the gene reference",
        description="Embed one protein per reference gene with ESM2 (mean over residues) and "
        "write a safetensors matrix aligned to the gene reference. Resumable: rerun the same "
        "command after an interruption.",
    )
    p.add_argument(
        "--pep",
        required=True,
        metavar="FASTA",
        help="Ensembl pep FASTA, or UniProt/Swiss-Prot FASTA (>sp|P04637|P53_HUMAN … GN=TP53 …) "
        "mapped to genes by --mapping or by gene symbol (.fa or .fa.gz)",
    )
    p.add_argument(
        "--mapping",
        metavar="TSV",
        help="UniProt FASTA: accession → gene_id table (columns accession, gene_id); default: "
        "match GN= symbols to the reference's symbols",
    )
    p.add_argument(
        "--model",
        default="esm2_t33_650M_UR50D",
        help="fair-esm ESM2 name or local ESM2 checkpoint .pt (default %(default)s)",
    )
    p.add_argument("--genes", help="gene reference TSV (default: the packaged reference)")
    p.add_argument("--gtf", help="Ensembl GTF: use Ensembl_canonical proteins (else longest)")
    p.add_argument("--layer", type=int, help="representation layer (default: last)")
    p.add_argument("--toks-per-batch", type=int, default=4096, help="default %(default)s")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="autocast dtype (auto: bf16/fp16 on CUDA, fp32 on CPU)",
    )
    p.add_argument("--window", type=int, default=1022, help="residues per window (long proteins)")
    p.add_argument("--stride", type=int, default=511, help="window stride in residues")
    p.add_argument("--keep-cache", action="store_true", help="keep OUT.cache/ after success")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.set_defaults(func=run_embed)

    a = subparsers.add_parser(
        "esm-align",
        help="align an existing gene embedding table to the gene reference",
        description="Align a gene embedding table made elsewhere (.pt, .npy + --ids, .tsv/.csv "
        "with a gene_id column) to the gene reference and write the esm-embed format.",
    )
    a.add_argument("table", help=".pt | .npy | .tsv | .csv")
    a.add_argument("--ids", help="gene IDs of a .npy / bare-tensor table, one per line")
    a.add_argument("--id-column", default="gene_id", help="ID column of a TSV/CSV")
    a.add_argument("--genes", help="gene reference TSV (default: the packaged reference)")
    a.add_argument("--out", required=True, help="output .safetensors")
    a.set_defaults(func=run_align)


def _reference(args: argparse.Namespace):
    from ..data.genes import GeneReference
    from ._genes import default_reference

    return GeneReference.from_tsv(args.genes) if args.genes else default_reference()


def run_embed(args: argparse.Namespace) -> int:
    from ._genes import embed_genes

    ref = _reference(args)
    _, has, meta = embed_genes(
        args.pep,
        args.model,
        reference=ref,
        gtf=args.gtf,
        layer=args.layer,
        toks_per_batch=args.toks_per_batch,
        device=args.device,
        precision=args.precision,
        window=args.window,
        stride=args.stride,
        out=args.out,
        keep_cache=args.keep_cache,
        progress=not args.no_progress,
        mapping=args.mapping,
    )
    print(
        f"{args.out}: {meta['n_genes']} genes × {meta['dim']} ({meta['model']}, layer "
        f"{meta['layer']}, {meta['protein_choice']} protein), {int(has.sum())} with protein, "
        f"{int((~has).sum())} without; reference {meta['reference_id']}"
    )
    if meta.get("protein_mapping"):
        print(f"  UniProt: {meta['protein_mapping']}")
    return 0


def run_align(args: argparse.Namespace) -> int:
    from ._matrix import align_embedding_table

    ref = _reference(args)
    _, has, meta = align_embedding_table(
        args.table, ref, ids=args.ids, id_column=args.id_column, out=args.out
    )
    print(
        f"{args.out}: {meta['n_genes']} genes × {meta['dim']} from {args.table}, "
        f"{int(has.sum())} found, {int((~has).sum())} missing; reference {meta['reference_id']}"
    )
    return 0
