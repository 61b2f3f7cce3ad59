#!/usr/bin/env python
"""Convert DEGreport's GEUVADIS ``humanGender`` data set into the bundled ARCHS4-format demo file.

``humanGender`` (Bioconductor DEGreport, "DGEList object for DE genes between Male and
Females", source "gEUvadis") is a SummarizedExperiment with integer read counts of 10,101
genes (unversioned Ensembl IDs) in 85 lymphoblastoid cell lines of the GEUVADIS project,
with colData ``group`` (Female/Male) and ``lib.size``. Fetch and unpack it outside the repo::

    apt-get update
    cd /tmp/annot && apt-get download r-bioc-degreport r-bioc-tcgabiolinksgui.data
    for f in *.deb; do dpkg-deb -x "$f" x; done
    python scripts/make_demo_data.py --annot /tmp/annot/x --debs /tmp/annot

The R object is read with the ``rdata`` package, which returns S4 objects as namespaces; the
counts are ``assays@data@listData[[1]]``, gene IDs its row names, samples its column names,
sex ``colData$group``. Gene symbols and biotypes are added from GENCODE v36
(TCGAbiolinksGUI.data) by unversioned ID; genes absent there get empty strings.

Output: ``bulkformer/resources/demo_geuvadis.h5`` in the ARCHS4 v2 gene-level layout
(``data/expression`` uint32 genes × samples, gzip 9 + shuffle; ``meta/genes/*``,
``meta/samples/*``, ``meta/info/*``; strings are variable-length UTF-8), plus
``meta/samples/sex``.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import logging
import os
import sys
import warnings

import h5py
import numpy as np
import pandas as pd

log = logging.getLogger("make_demo_data")
LIB = "usr/lib/R/site-library"


def _read_rda(path: str) -> dict:
    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rdata.read_rda(path)


def _deb_version(debs: str | None, name: str) -> str:
    hits = sorted(glob.glob(os.path.join(debs, f"{name}_*.deb"))) if debs else []
    return os.path.basename(hits[-1]).split("_")[1] if hits else "unknown"


def load_human_gender(annot: str):
    path = os.path.join(annot, LIB, "DEGreport/data/humanGender.rda")
    se = _read_rda(path)["humanGender"]
    cls = list(np.asarray(getattr(se, "class", ["?"])))
    if cls != ["SummarizedExperiment"]:
        raise ValueError(f"{path}: expected a SummarizedExperiment, got class {cls}")
    arr = se.assays.data.listData[0]  # xarray.DataArray (genes, samples)
    counts = np.asarray(arr.values)
    genes = np.asarray(arr.coords["dim_0"].values).astype(str)
    samples = np.asarray(arr.coords["dim_1"].values).astype(str)
    cd = se.colData
    if list(np.asarray(cd.rownames).astype(str)) != list(samples):
        raise ValueError(f"{path}: colData row names differ from the assay's column names")
    sex = np.asarray(cd.listData["group"]).astype(str)
    lib_size = np.asarray(cd.listData["lib.size"], dtype=np.float64)
    return path, counts, genes, samples, sex, lib_size


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--annot", required=True, help="directory the .deb files were unpacked into")
    ap.add_argument("--debs", help="directory holding the .deb files (to record versions)")
    ap.add_argument(
        "--out", default=os.path.join(here, "..", "bulkformer", "resources", "demo_geuvadis.h5")
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    src, counts, genes, samples, sex, lib_size = load_human_gender(args.annot)
    G, S = counts.shape
    if not np.issubdtype(counts.dtype, np.integer):
        if not np.array_equal(counts, np.round(counts)):
            raise ValueError(f"{src}: counts are not integers ({counts.dtype}); not raw counts")
    if counts.min() < 0:
        raise ValueError(f"{src}: negative counts")
    total = counts.sum(axis=0, dtype=np.int64)
    if not np.array_equal(total.astype(np.float64), lib_size):
        log.warning("colData lib.size differs from the column sums; readsaligned = column sums")
    sex = np.char.lower(sex)
    log.info(
        "humanGender: %d genes × %d samples, %s",
        G,
        S,
        dict(zip(*np.unique(sex, return_counts=True))),
    )

    gc_path = os.path.join(
        args.annot, LIB, "TCGAbiolinksGUI.data/data/gencode.v36.annotation.genes.rda"
    )
    gr = _read_rda(gc_path)["gencode.v36.annotation.genes"]
    ld = gr.elementMetadata.listData
    gc = pd.DataFrame(
        {
            "uid": pd.Series(np.asarray(ld["gene_id"]).astype(str)).str.replace(
                r"\.\d+$", "", regex=True
            ),
            "symbol": np.asarray(ld["gene_name"]).astype(str),
            "biotype": np.asarray(ld["gene_type"]).astype(str),
        }
    )
    gc = gc[~gc["uid"].str.endswith("_PAR_Y")].set_index("uid")
    sym = gc["symbol"].reindex(genes).fillna("").to_numpy(object)
    bt = gc["biotype"].reindex(genes).fillna("").to_numpy(object)
    n_annot = int((sym != "").sum())

    v_deg = _deb_version(args.debs, "r-bioc-degreport")
    v_tcga = _deb_version(args.debs, "r-bioc-tcgabiolinksgui.data")
    provenance = (
        f"GEUVADIS lymphoblastoid cell line RNA-seq, {S} samples x {G} genes, integer read "
        f"counts as shipped in Bioconductor DEGreport's data set humanGender (Debian package "
        f"r-bioc-degreport {v_deg}, data/humanGender.rda, a SummarizedExperiment; documented "
        f"source 'gEUvadis'). Sex from colData$group. Gene symbols and biotypes joined from "
        f"GENCODE v36 (r-bioc-tcgabiolinksgui.data {v_tcga}) by unversioned Ensembl ID "
        f"({n_annot} of {G} found; the rest empty). Counts stored unchanged as uint32, genes x "
        f"samples, in the ARCHS4 v2 gene-level layout. Converted by scripts/make_demo_data.py "
        f"on {datetime.date.today().isoformat()}."
    )
    s_dt = h5py.string_dtype("utf-8")
    tmp = f"{args.out}.tmp-{os.getpid()}"
    with h5py.File(tmp, "w") as f:
        f.create_dataset(
            "data/expression",
            data=counts.astype(np.uint32),
            chunks=(min(G, 2000), min(S, 100)),
            compression="gzip",
            compression_opts=9,
            shuffle=True,
        )
        mg = f.create_group("meta/genes")
        mg.create_dataset("ensembl_gene_id", data=genes.astype(object), dtype=s_dt)
        mg.create_dataset("symbol", data=sym, dtype=s_dt)
        mg.create_dataset("biotype", data=bt, dtype=s_dt)
        ms = f.create_group("meta/samples")
        ms.create_dataset("geo_accession", data=samples.astype(object), dtype=s_dt)
        ms.create_dataset("series_id", data=np.array(["GEUVADIS"] * S, dtype=object), dtype=s_dt)
        ms.create_dataset(
            "title",
            data=np.array([f"GEUVADIS {s} LCL RNA-seq" for s in samples], dtype=object),
            dtype=s_dt,
        )
        ms.create_dataset(
            "source_name_ch1",
            data=np.array(["lymphoblastoid cell line"] * S, dtype=object),
            dtype=s_dt,
        )
        ms.create_dataset(
            "characteristics_ch1",
            data=np.array([f"Sex: {x},cell line: {s}" for x, s in zip(sex, samples)], dtype=object),
            dtype=s_dt,
        )
        ms.create_dataset("sex", data=sex.astype(object), dtype=s_dt)
        ms.create_dataset("singlecellprobability", data=np.zeros(S, dtype=np.float64))
        ms.create_dataset("readsaligned", data=total.astype(np.float64))
        mi = f.create_group("meta/info")
        mi.create_dataset("version", data="demo-geuvadis-1", dtype=s_dt)
        mi.create_dataset("provenance", data=provenance, dtype=s_dt)
        mi.create_dataset("source_package", data=f"r-bioc-degreport {v_deg}", dtype=s_dt)
        mi.create_dataset("created", data=datetime.date.today().isoformat(), dtype=s_dt)
        mi.create_dataset("counts", data="integer read counts (unchanged)", dtype=s_dt)
    os.replace(tmp, args.out)
    log.info("wrote %s (%d bytes)", args.out, os.path.getsize(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
