#!/usr/bin/env python
"""Build the gene reference and gene-length table shipped in ``bulkformer/resources``.

Inputs are Bioconductor annotation packages as packaged by Debian (no network needed once the
.deb files are present). Fetch and unpack them outside the repository::

    apt-get update
    cd /tmp/annot && apt-get download r-bioc-genelendatabase r-bioc-tcgabiolinksgui.data
    for f in *.deb; do dpkg-deb -x "$f" x; done
    python scripts/build_default_reference.py --annot /tmp/annot/x --debs /tmp/annot

Outputs (``--out-dir``, default ``bulkformer/resources``):

``gene_reference.tsv.gz``
    Protein-coding genes of GENCODE v36 (``gene_type == "protein_coding"``; the gene model of
    GDC/TCGA "STAR - Counts" files), ``_PAR_Y`` copies dropped, Ensembl IDs unversioned,
    ordered by gene ID, symbol = GENCODE ``gene_name``. Length: the longest transcript (sum of
    its exons) of the gene in the UCSC hg19 ``ensGene`` table of geneLenDataBase (matched by
    unversioned Ensembl ID); where the ID is absent there, the longest RefSeq transcript of the
    same symbol in hg19 ``geneSymbol`` (only for symbols unique among the reference genes);
    otherwise NaN.
``gene_lengths.tsv.gz``
    ``gene_id, length`` for every Ensembl gene (any biotype) with a length from the same
    rules: all genes of hg19 ``ensGene``, plus the symbol-matched reference genes, plus the
    GENCODE v36 ``_PAR_Y`` copies (same length as the X copy).

The longest transcript is a lower bound of the union-of-exons length that
``GeneReference.build`` computes from a GTF (the union covers every transcript); no exon
coordinates exist in these packages, so the union cannot be formed here.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import gzip
import io
import logging
import os
import re
import sys
import warnings

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bulkformer.data.genes import GeneReference, strip_version  # noqa: E402

log = logging.getLogger("build_default_reference")
LIB = "usr/lib/R/site-library"


def _read_rda(path: str) -> dict:
    import rdata

    with warnings.catch_warnings():  # Bioconductor S4 classes have no rdata constructor
        warnings.simplefilter("ignore")
        return rdata.read_rda(path)


def _deb_version(debs: str | None, name: str) -> str:
    if debs:
        hits = sorted(glob.glob(os.path.join(debs, f"{name}_*.deb")))
        if hits:
            return os.path.basename(hits[-1]).split("_")[1]
    return "unknown"


def _r_version(annot: str, pkg: str) -> str:
    desc = os.path.join(annot, LIB, pkg, "DESCRIPTION")
    with open(desc) as f:
        m = re.search(r"^Version:\s*(\S+)", f.read(), re.M)
    return m.group(1) if m else "unknown"


def load_gencode_v36(annot: str) -> pd.DataFrame:
    path = os.path.join(annot, LIB, "TCGAbiolinksGUI.data/data/gencode.v36.annotation.genes.rda")
    gr = _read_rda(path)["gencode.v36.annotation.genes"]  # a GRanges
    cols = gr.elementMetadata.listData
    df = pd.DataFrame(
        {k: np.asarray(cols[k], dtype=object) for k in ("gene_id", "gene_type", "gene_name")}
    )
    if len(df) != 60660:
        raise ValueError(f"{path}: expected 60,660 GENCODE v36 genes, found {len(df):,}")
    df["uid"] = strip_version(df["gene_id"])
    return df


def load_transcript_lengths(annot: str, table: str) -> pd.DataFrame:
    path = os.path.join(annot, LIB, f"geneLenDataBase/data/{table}.LENGTH.RData")
    df = _read_rda(path)[f"{table}.LENGTH"]
    if list(df.columns) != ["Gene", "Transcript", "Length"]:
        raise ValueError(f"{path}: unexpected columns {list(df.columns)}")
    return df


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--annot", required=True, help="directory the .deb files were unpacked into")
    ap.add_argument("--debs", help="directory holding the .deb files (to record versions)")
    ap.add_argument("--out-dir", default=os.path.join(here, "..", "bulkformer", "resources"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    versions = {
        "r-bioc-tcgabiolinksgui.data": _deb_version(args.debs, "r-bioc-tcgabiolinksgui.data"),
        "r-bioc-genelendatabase": _deb_version(args.debs, "r-bioc-genelendatabase"),
    }
    r_versions = {
        "TCGAbiolinksGUI.data": _r_version(args.annot, "TCGAbiolinksGUI.data"),
        "geneLenDataBase": _r_version(args.annot, "geneLenDataBase"),
    }

    gencode = load_gencode_v36(args.annot)
    pc = gencode[
        (gencode["gene_type"] == "protein_coding") & ~gencode["gene_id"].str.endswith("_PAR_Y")
    ]
    pc = pc.sort_values("uid")
    if not pc["uid"].is_unique:
        raise ValueError("GENCODE v36 protein-coding gene IDs are not unique once unversioned")

    ens = load_transcript_lengths(args.annot, "hg19.ensGene")
    ens_len = ens.groupby("Gene")["Length"].max().astype(np.float64)
    sym = load_transcript_lengths(args.annot, "hg19.geneSymbol")
    sym_len = sym.groupby("Gene")["Length"].max().astype(np.float64)

    length = pc["uid"].map(ens_len)
    by_id = int(length.notna().sum())
    unique_sym = ~pc["gene_name"].duplicated(keep=False)
    fill = length.isna() & unique_sym & pc["gene_name"].isin(sym_len.index)
    length[fill] = pc.loc[fill, "gene_name"].map(sym_len)
    by_sym = int(fill.sum())
    n_nan = int(length.isna().sum())
    log.info(
        "%d protein-coding genes: %d lengths by Ensembl ID, %d by symbol, %d without",
        len(pc),
        by_id,
        by_sym,
        n_nan,
    )

    today = datetime.date.today().isoformat()
    src = (
        f"Debian r-bioc-tcgabiolinksgui.data {versions['r-bioc-tcgabiolinksgui.data']} "
        f"(TCGAbiolinksGUI.data {r_versions['TCGAbiolinksGUI.data']}, "
        "gencode.v36.annotation.genes.rda); Debian r-bioc-genelendatabase "
        f"{versions['r-bioc-genelendatabase']} (geneLenDataBase {r_versions['geneLenDataBase']}, "
        "hg19.ensGene.LENGTH and hg19.geneSymbol.LENGTH)"
    )
    prov = {
        "source": src,
        "built": f"{today} by scripts/build_default_reference.py",
        "selection": "GENCODE v36 genes with gene_type protein_coding (the GDC/TCGA STAR-Counts "
        "gene model), _PAR_Y copies dropped",
        "order": "unversioned Ensembl gene ID, ascending string order",
        "symbol": "GENCODE v36 gene_name",
        "length": "longest transcript (sum of its exons) of the gene in UCSC hg19 ensGene "
        "(geneLenDataBase), by unversioned Ensembl ID; else longest RefSeq transcript of the "
        "same symbol in hg19 geneSymbol (symbols unique in this reference only); else NA. A "
        "lower bound of the union-of-exons length",
        "n_length_by_ensembl_id": by_id,
        "n_length_by_symbol": by_sym,
        "n_without_length": n_nan,
    }
    ref = GeneReference(
        pc["uid"].to_numpy(object),
        pc["gene_name"].to_numpy(object),
        length.to_numpy(np.float64),
        prov,
    )
    os.makedirs(args.out_dir, exist_ok=True)
    ref_path = os.path.join(args.out_dir, "gene_reference.tsv.gz")
    ref.to_tsv(ref_path)
    log.info("wrote %s: %d genes, id %s", ref_path, len(ref), ref.id)

    # all genes with a length: hg19 ensGene (any biotype) + symbol-filled reference genes
    # + GENCODE v36 _PAR_Y copies with their X copy's length
    all_len = ens_len.copy()
    extra = pd.Series(length[fill].to_numpy(np.float64), index=pc.loc[fill, "uid"].to_numpy())
    all_len = pd.concat([all_len, extra[~extra.index.isin(all_len.index)]])
    par = gencode[gencode["gene_id"].str.endswith("_PAR_Y")]
    par_len = (
        pd.Series(
            strip_version(par["gene_id"].str.replace("_PAR_Y", "", regex=False)), index=par["uid"]
        )
        .map(all_len)
        .dropna()
    )
    all_len = pd.concat([all_len, par_len]).sort_index()
    all_len = all_len[~all_len.index.duplicated()]
    n_gdc = int(pd.Index(gencode["uid"]).isin(all_len.index).sum())
    header = {
        "source": src,
        "built": f"{today} by scripts/build_default_reference.py",
        "content": "all Ensembl genes (any biotype) with a known length: UCSC hg19 ensGene "
        "genes (longest transcript), plus reference genes given a length by symbol, plus "
        "GENCODE v36 _PAR_Y copies (length of the X copy)",
        "n_genes": len(all_len),
        "gencode_v36_genes_with_length": f"{n_gdc} of {len(gencode)}",
    }
    buf = io.StringIO()
    for k, v in header.items():
        buf.write(f"# {k}: {v}\n")
    pd.DataFrame({"gene_id": all_len.index, "length": all_len.to_numpy().astype(np.int64)}).to_csv(
        buf, sep="\t", index=False
    )
    len_path = os.path.join(args.out_dir, "gene_lengths.tsv.gz")
    tmp = f"{len_path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(gzip.compress(buf.getvalue().encode(), compresslevel=9, mtime=0))
    os.replace(tmp, len_path)
    log.info(
        "wrote %s: %d genes (%d of %d GENCODE v36 IDs)", len_path, len(all_len), n_gdc, len(gencode)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
