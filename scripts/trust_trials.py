#!/usr/bin/env python3
"""Trial campaign: hostile-but-realistic inputs, tried as a new user would, through the CLI.

Every trial runs ``bulkformer …`` (``bulkformer.cli.main``) in a child process that runs the
trials of a category one after the other (a child killed by a signal is a crash; the trials
after it go to a fresh child). Each trial says what must happen: a result (checked against
what it must be) or an error (one line ``bulkformer CMD: error: …`` naming a given file or
field). Input files are hashed before and after: a changed input, or a pre-existing output
that is gone, is data loss. Output: one table row per category::

    category  trials  correct  clear errors  unclear errors  crashes  silent wrong  data loss

Byte flips that leave the file readable but change a stored value (a metadata string: HDF5
keeps no checksum of raw data) cannot be detected by any reader; they are counted apart, in
the "changed, undetectable" note under the table, not as silent wrong results.

Usage: ``python scripts/trust_trials.py [--seeds N] [--keep DIR] [--only CATEGORY]``
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import h5py
import numpy as np
import pandas as pd

DRIVER = r"""
import contextlib, io, json, sys
from bulkformer.cli import main
for line in sys.stdin:
    t = json.loads(line)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(t["argv"])
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 2
    print(json.dumps({"rc": rc, "err": err.getvalue(), "out": out.getvalue()}), flush=True)
"""


@dataclass
class Trial:
    cat: str
    name: str
    argv: list
    expect: str  # "ok" or "error"
    token: str = ""  # an error must name this (file name, field)
    check: object = None  # callable(result) -> None | str (what is wrong) for "ok" trials
    inputs: list = field(default_factory=list)  # files/dirs that must not change
    keep: list = field(default_factory=list)  # files that must still exist afterwards
    flip: str = ""  # "metadata"/"chunks": a byte-flip trial (undetectable changes counted apart)
    pre: object = None  # callable() run right before the trial (parent side), returns cleanup


def _hash(path: str) -> str:
    h = hashlib.sha256()
    if os.path.isdir(path):
        for root, _, files in sorted(os.walk(path)):
            for f in sorted(files):
                h.update(f.encode())
                with open(os.path.join(root, f), "rb") as fh:
                    h.update(fh.read())
    elif os.path.exists(path):
        with open(path, "rb") as fh:
            h.update(fh.read())
    else:
        return "absent"
    return h.hexdigest()


# ============================================================================ case builders
def _ref(d, G, first=0):
    from bulkformer.data.genes import GeneReference

    rng = np.random.default_rng(7)
    ref = GeneReference(
        np.array([f"ENSG{first + i:011d}" for i in range(G)], dtype=object),
        np.array([f"GENE{i}" for i in range(G)], dtype=object),
        rng.uniform(300, 9000, G),
    )
    p = os.path.join(d, f"ref{G}_{first}.tsv")
    ref.to_tsv(p)
    return ref, p


def _expr(out):
    return np.load(os.path.join(out, "expression.npy"))


def _same_as(other):
    def check(out):
        if not os.path.exists(os.path.join(out, "expression.npy")):
            return "no corpus written"
        if not np.array_equal(_expr(out), _expr(other)):
            return f"expression differs from {os.path.basename(other)}"
        return None

    return check


def archs4_trials(d):
    from bulkformer.data.synthetic import make_archs4

    T = []
    _, ref60 = _ref(d, 60)
    _, ref50 = _ref(d, 50)
    base = ["--min-nonzero", "1", "--no-progress"]

    def pre(argv_out):
        return ["preprocess", *argv_out[0], "--reference", argv_out[1], *base, "--out",
                argv_out[2]]  # fmt: skip

    # ---- orientation
    for n, seed in ((60, 1), (60, 2)):
        sg = make_archs4(f"{d}/sq_sg{seed}.h5", n, n, chunks=(20, 10), transposed=True, seed=seed)
        gs = make_archs4(f"{d}/sq_gs{seed}.h5", n, n, chunks=(20, 10), seed=seed)
        good = f"{d}/o_gs{seed}"
        T.append(Trial("orientation", f"square genes×samples stated {seed}",
                       pre(([ "--archs4", gs, "--archs4-layout", "genes-by-samples"], ref60, good)),
                       "ok", inputs=[gs]))  # fmt: skip
        T.append(Trial("orientation", f"square samples×genes, auto {seed}",
                       pre((["--archs4", sg], ref60, f"{d}/o_sg_auto{seed}")), "error",
                       token=os.path.basename(sg), inputs=[sg]))  # fmt: skip
        T.append(Trial("orientation", f"square genes×samples, auto {seed}",
                       pre((["--archs4", gs], ref60, f"{d}/o_gs_auto{seed}")), "error",
                       token=os.path.basename(gs), inputs=[gs]))  # fmt: skip
        T.append(Trial("orientation", f"square samples×genes stated {seed}",
                       pre((["--archs4", sg, "--archs4-layout", "samples-by-genes"], ref60,
                            f"{d}/o_sg{seed}")), "ok", check=_same_as(good), inputs=[sg]))  # fmt: skip
    for ng, ns in ((60, 59), (59, 60), (60, 40)):
        t = make_archs4(f"{d}/r_{ng}_{ns}.h5", ng, ns, chunks=(20, 10), transposed=True)
        g = make_archs4(f"{d}/rg_{ng}_{ns}.h5", ng, ns, chunks=(20, 10))
        _, rp = _ref(d, ng)
        T.append(Trial("orientation", f"{ns}×{ng} samples×genes auto",
                       pre((["--archs4", t], rp, f"{d}/r_{ng}_{ns}")), "ok",
                       check=_same_as(f"{d}/rg_{ng}_{ns}"), inputs=[t]))  # fmt: skip
        T.insert(len(T) - 1, Trial("orientation", f"{ng}×{ns} genes×samples auto",
                 pre((["--archs4", g], rp, f"{d}/rg_{ng}_{ns}")), "ok", inputs=[g]))  # fmt: skip
    # ---- metadata
    src = make_archs4(f"{d}/m.h5", 50, 30, chunks=(10, 10))

    def edited(name, fn):
        p = f"{d}/m_{name}.h5"
        shutil.copy(src, p)
        with h5py.File(p, "a") as f:
            fn(f)
        return p

    def shorten(group, field_):
        def fn(f):
            v = f[f"{group}/{field_}"][:-1]
            del f[f"{group}/{field_}"]
            dt = h5py.string_dtype() if v.dtype.kind == "O" else v.dtype
            f.create_dataset(f"{group}/{field_}", data=v, dtype=dt)

        return fn

    for grp, fld in (("meta/samples", "title"), ("meta/samples", "geo_accession"),
                     ("meta/samples", "singlecellprobability"), ("meta/genes", "symbol"),
                     ("meta/genes", "ensembl_gene_id")):  # fmt: skip
        p = edited(f"short_{fld}", shorten(grp, fld))
        T.append(Trial("archs4 metadata", f"{grp}/{fld} one short",
                       pre((["--archs4", p], ref50, f"{d}/m_short_{fld}")), "error",
                       token=f"{grp}/{fld}", inputs=[p]))  # fmt: skip

    def two_d(f):
        v = f["meta/samples/series_id"][:]
        del f["meta/samples/series_id"]
        f.create_dataset("meta/samples/series_id", data=np.stack([v, v], 1),
                         dtype=h5py.string_dtype())  # fmt: skip

    p = edited("2d", two_d)
    T.append(Trial("archs4 metadata", "2-D sample field", pre((["--archs4", p], ref50,
                   f"{d}/m_2d")), "error", token="meta/samples/series_id", inputs=[p]))  # fmt: skip
    p = edited("nogsm", lambda f: f.__delitem__("meta/samples/geo_accession"))
    T.append(Trial("archs4 metadata", "no geo_accession, --samples GSM",
                   pre((["--archs4", p, "--samples", "GSM1000001"], ref50, f"{d}/m_nogsm")),
                   "error", token="m_nogsm.h5", inputs=[p]))  # fmt: skip
    for argv, tok, nm in (
        (["--samples", "GSM1000001", "GSM42"], "GSM42", "unknown GSM"),
        (["--samples", "gsm1000001"], "gsm1000001", "lower-case GSM"),
        (["--search", "liver", "--search-field", "tissue_name"], "tissue_name", "unknown field"),
        (["--search", "(liver", "--search-field", "title"], "(liver", "bad regex"),
        (["--search", "nomatchanywhere"], "m.h5", "search matches nothing"),
        (["--label", "sex"], "sex", "unknown label"),
    ):
        T.append(Trial("archs4 metadata", nm, pre((["--archs4", src, *argv], ref50,
                       f"{d}/m_{nm.replace(' ', '_')}")), "error", token=tok, inputs=[src]))  # fmt: skip
    T.append(Trial("archs4 metadata", "info on a directory", ["archs4", "info", d], "error",
                   token=os.path.basename(d)))  # fmt: skip
    T.append(Trial("archs4 metadata", "qc unknown GSM", ["archs4", "qc", src, "--samples",
                   "GSM7"], "error", token="GSM7", inputs=[src]))  # fmt: skip
    txt = f"{d}/notes.h5"
    open(txt, "w").write("not hdf5")
    T.append(Trial("archs4 metadata", "text file as .h5", pre((["--archs4", txt], ref50,
                   f"{d}/m_txt")), "error", token="notes.h5", inputs=[txt]))  # fmt: skip
    return T


def _chunk_spans(path):
    with h5py.File(path) as f:
        spans = []
        f["data/expression"].id.chunk_iter(lambda ci: spans.append((ci.byte_offset, ci.size)))
    return spans


def _flip(src, dst, rng, n, where, spans):
    shutil.copy(src, dst)
    size = os.path.getsize(dst)
    inside = np.zeros(size, dtype=bool)
    for off, sz in spans:
        inside[off : off + sz] = True
    pool = np.flatnonzero(inside if where == "chunks" else ~inside)
    pos = rng.choice(pool, size=min(n, len(pool)), replace=False)
    with open(dst, "r+b") as fh:
        for p in pos.tolist():
            fh.seek(p)
            b = fh.read(1)[0]
            fh.seek(p)
            fh.write(bytes([b ^ int(rng.integers(1, 256))]))


def fuzz_trials(d, seeds):
    from bulkformer.data.synthetic import make_archs4

    _, ref = _ref(d, 48)
    T = []
    clean = make_archs4(f"{d}/fz.h5", 48, 36, chunks=(16, 12), seed=11)
    shuf = make_archs4(f"{d}/fzs.h5", 48, 36, chunks=(16, 12), seed=11, shuffle=True)
    argv = ["--reference", ref, "--min-nonzero", "1", "--no-progress", "--threads", "2"]
    for src, tag in ((clean, "fz"), (shuf, "fzs")):
        T.append(Trial("byte flips: chunks", f"clean {tag}", ["preprocess", "--archs4", src,
                       *argv, "--out", f"{d}/{tag}_clean"], "ok", inputs=[src]))  # fmt: skip
        T.append(Trial("byte flips: metadata", f"clean {tag}", ["preprocess", "--archs4", src,
                       *argv, "--out", f"{d}/{tag}_clean_m"], "ok", inputs=[src]))  # fmt: skip
        spans = _chunk_spans(src)
        for seed in range(seeds):
            for where in ("chunks", "metadata"):
                n = (1, 4, 16, 64, 256)[seed % 5]
                f = f"{d}/{tag}_{where}_{seed}.h5"
                _flip(src, f, np.random.default_rng(seed), n, where, spans)
                T.append(Trial(f"byte flips: {where}", f"{tag} seed {seed} ({n} bytes)",
                               ["preprocess", "--archs4", f, *argv, "--out", f"{d}/o_{tag}_{where}_{seed}"],
                               "any", token=os.path.basename(f), inputs=[f], flip=where,
                               check=_same_as(f"{d}/{tag}_clean")))  # fmt: skip
                T.append(Trial(f"byte flips: {where}", f"{tag} seed {seed} archs4 info",
                               ["archs4", "info", f], "any", token=os.path.basename(f),
                               inputs=[f], flip=where))  # fmt: skip
    return T


def _set_count(data: bytes, value: bytes) -> bytes:
    """The unstranded count (4th field) of the 100th gene row set to ``value``."""
    lines = data.split(b"\n")
    i = next(k for k, ln in enumerate(lines) if ln.startswith(b"gene_id")) + 5 + 100
    f = lines[i].split(b"\t")
    f[3] = value
    lines[i] = b"\t".join(f)
    return b"\n".join(lines)


def gdc_trials(d):
    from bulkformer.data.synthetic_gdc import make_gdc_dir

    base_dir, sheet, _, _ = make_gdc_dir(f"{d}/gdc", 4, n_genes=3000)
    T = []

    def copy(name):
        dst = f"{d}/{name}"
        shutil.copytree(base_dir, dst)
        return dst, sorted(
            os.path.join(r, f)
            for r, _, fs in os.walk(dst)
            for f in fs
            if f.endswith(".tsv") and "sample_sheet" not in f
        )

    def build(dd, sh, out, *extra):
        return ["preprocess", "--gdc", dd, "--sample-sheet", sh, "--min-nonzero", "10",
                "--no-progress", "--out", out, *extra]  # fmt: skip

    good = f"{d}/g_good"
    T.append(Trial("gdc", "plain", build(base_dir, sheet, good), "ok", inputs=[base_dir]))

    def labels(want):
        def check(out):
            got = sorted(set(pd.read_csv(f"{out}/samples.tsv", sep="\t")["label"]))
            return None if got == want else f"labels {got}, expected {want}"

        return check

    T.append(Trial("gdc", "--label 'Project ID'", build(base_dir, sheet, f"{d}/g_lab", "--label",
                   "Project ID"), "ok", check=labels(["TCGA-BRCA", "TCGA-COAD", "TCGA-LUAD"]),
                   inputs=[base_dir]))  # fmt: skip
    T.append(Trial("gdc", "--label 'Sample Type'", build(base_dir, sheet, f"{d}/g_lab2", "--label",
                   "Sample Type"), "ok", check=labels(["Primary Tumor", "Solid Tissue Normal"]),
                   inputs=[base_dir]))  # fmt: skip
    T.append(Trial("gdc", "--label cancer_type", build(base_dir, sheet, f"{d}/g_lab3", "--label",
                   "cancer_type"), "ok", check=labels(["TCGA-BRCA", "TCGA-COAD", "TCGA-LUAD"]),
                   inputs=[base_dir]))  # fmt: skip
    T.append(Trial("gdc", "--label unknown", build(base_dir, sheet, f"{d}/g_lab4", "--label",
                   "Tissue"), "error", token="Tissue", inputs=[base_dir]))  # fmt: skip
    for which in ("all", "first", "second"):
        dd, files = copy(f"g_crlf_{which}")
        sel = {"all": files, "first": files[:1], "second": files[1:2]}[which]
        for f in sel:
            data = open(f, "rb").read().replace(b"\n", b"\r\n")
            open(f, "wb").write(data)
        T.append(Trial("gdc", f"CRLF {which}", build(dd, f"{dd}/gdc_sample_sheet.tsv",
                       f"{d}/g_crlf_{which}_o"), "ok", check=_same_as(good), inputs=[dd]))  # fmt: skip
    for what in ("empty", "empty gz", "binary", "truncated", "html", "gz garbage", "fewer rows",
                 "decimal count", "negative count", "NaN count"):  # fmt: skip
        dd, files = copy(f"g_{what.replace(' ', '_')}")
        v = files[1]
        data = open(v, "rb").read()
        new = {
            "empty": b"",
            "empty gz": gzip.compress(b""),
            "binary": os.urandom(4000) + b"\0",
            "truncated": data[: len(data) // 2],
            "html": b"<html><body>502 Bad Gateway</body></html>\n",
            "gz garbage": b"\x1f\x8b" + os.urandom(300),
            "fewer rows": b"\n".join(data.split(b"\n")[:-30]) + b"\n",
            "decimal count": _set_count(data, b"12.5"),
            "negative count": _set_count(data, b"-12"),
            "NaN count": _set_count(data, b"NaN"),
        }[what]
        if new == data:
            continue
        open(v, "wb").write(new)
        T.append(Trial("gdc", f"count file {what}", build(dd, f"{dd}/gdc_sample_sheet.tsv",
                       f"{d}/g_{what.replace(' ', '_')}_o"), "error", token=os.path.basename(v),
                       inputs=[dd]))  # fmt: skip
    text = open(sheet, "rb").read()
    for what, data in (
        ("binary", os.urandom(3000)),
        ("latin1", text.replace(b"Primary Tumor", b"Prim\xe4ry Tumor")),
        ("empty", b""),
        ("csv", text.replace(b"\t", b",")),
        ("no Sample ID", text.replace(b"Sample ID", b"Sample")),
    ):
        p = f"{d}/sheet_{what.replace(' ', '_')}.tsv"
        open(p, "wb").write(data)
        T.append(Trial("gdc", f"sample sheet {what}", build(base_dir, p, f"{d}/g_sh_{what}"),
                       "error", token=os.path.basename(p), inputs=[p, base_dir]))  # fmt: skip
    for what, data in (("BOM", b"\xef\xbb\xbf" + text), ("CRLF", text.replace(b"\n", b"\r\n")),
                       ("gzip", gzip.compress(text))):  # fmt: skip
        p = f"{d}/sheet_ok_{what}.tsv"
        open(p, "wb").write(data)
        T.append(Trial("gdc", f"sample sheet {what}", build(base_dir, p, f"{d}/g_sh_ok_{what}"),
                       "ok", check=_same_as(good), inputs=[p, base_dir]))  # fmt: skip
    return T


def h5ad_trials(d):
    import anndata as ad

    from bulkformer.data.oracle import log1p_tpm_ref

    ref, rp = _ref(d, 40, first=99_000_000_000)  # IDs the embedded length table lacks
    rng = np.random.default_rng(3)
    counts = rng.poisson(rng.uniform(1, 60, 40), (10, 40)).astype(np.float64)
    var = pd.DataFrame(index=ref.gene_ids)
    obs = pd.DataFrame(index=[f"S{i}" for i in range(10)])
    T = []

    def write(name, x):
        p = f"{d}/{name}.h5ad"
        ad.AnnData(X=np.asarray(x, dtype=np.float32), obs=obs, var=var).write_h5ad(p)
        return p

    def build(p, out, *extra):
        return ["preprocess", "--h5ad", p, "--reference", rp, "--min-nonzero", "1", "--splits",
                "1,0,0", "--no-progress", "--out", out, *extra]  # fmt: skip

    def values_equal(want):
        def check(out):
            import json as _j

            z = _expr(out).astype(np.float64)
            with np.load(f"{out}/stats.npz") as s:
                mean, std = s["mean"], s["std"]
            got = z * std + mean
            ok = std > 0
            err = np.abs(got - want)[:, ok].max()
            _ = _j
            return None if err < 5e-3 * max(1.0, np.abs(want).max()) else f"max error {err}"

        return check

    tpm = counts / counts.sum(1, keepdims=True) * 1e6
    want_counts = log1p_tpm_ref(counts, ref.lengths)
    for name, x, kind, expect, tok in (
        ("counts", counts, "counts", "ok", ""),
        ("counts_noise", counts + 1e-5, "counts", "ok", ""),
        ("counts_frac", counts + 0.25, "counts", "error", "counts_frac.h5ad"),
        ("tpm_as_counts", tpm, "counts", "error", "tpm_as_counts.h5ad"),
        ("tpm", tpm, "tpm", "ok", ""),
        ("tpm_over", tpm * 3, "tpm", "error", "tpm_over.h5ad"),
        ("log1p", np.log1p(tpm), "log1p_tpm", "ok", ""),
        ("log2p", np.log2(tpm + 1), "log1p_tpm", "error", "log2p.h5ad"),
        ("counts_as_log1p", counts * 100, "log1p_tpm", "error", "counts_as_log1p.h5ad"),
        ("negative", counts - 5, "counts", "error", "negative.h5ad"),
        ("nan", np.where(counts > 50, np.nan, counts), "counts", "error", "nan.h5ad"),
    ):
        p = write(name, x)
        want = {"counts": want_counts, "tpm": np.log1p(tpm), "log1p_tpm": np.log1p(tpm)}[kind]
        T.append(Trial("h5ad values", f"{name} as --values {kind}", build(p, f"{d}/h_{name}",
                       "--values", kind), expect, token=tok, inputs=[p],
                       check=values_equal(want) if expect == "ok" else None))  # fmt: skip
    p = write("locked", counts)

    def lock(p=p):
        fh = open(p, "rb")
        fcntl.flock(fh, fcntl.LOCK_EX)
        return fh.close

    T.append(Trial("h5ad values", "locked .h5ad", build(p, f"{d}/h_locked"), "error",
                   token="HDF5_USE_FILE_LOCKING", inputs=[p], pre=lock))  # fmt: skip
    T.append(Trial("h5ad values", "not an .h5ad", build(rp, f"{d}/h_txt"), "error",
                   token=os.path.basename(rp), inputs=[rp]))  # fmt: skip
    return T


def args_trials(d):
    from bulkformer.data.synthetic import make_archs4

    src = make_archs4(f"{d}/a.h5", 50, 30, chunks=(10, 10))
    _, rp = _ref(d, 50)
    base = ["preprocess", "--archs4", src, "--reference", rp, "--no-progress"]
    T = []
    for argv, tok in (
        (["--threads", "-3"], "--threads"),
        (["--threads", "0"], "--threads"),
        (["--threads", "two"], "--threads"),
        (["--block-size", "0"], "--block-size"),
        (["--block-size", "-512"], "--block-size"),
        (["--min-nonzero", "-1"], "--min-nonzero"),
        (["--fallback-length", "-5"], "--fallback-length"),
        (["--fallback-length", "1kb"], "--fallback-length"),
        (["--splits", "0.9,0.1"], "--splits"),
        (["--shard", "3/2"], "shard"),
        (["--archs4-layout", "sideways"], "--archs4-layout"),
    ):
        T.append(Trial("numeric arguments", " ".join(argv), [*base, *argv, "--out",
                       f"{d}/a_{len(T)}"], "error", token=tok, inputs=[src]))  # fmt: skip
    T.append(Trial("numeric arguments", "archs4 qc --threads -1", ["archs4", "qc", src,
                   "--threads", "-1"], "error", token="--threads", inputs=[src]))  # fmt: skip
    T.append(Trial("numeric arguments", "--threads 1", [*base, "--min-nonzero", "1", "--threads",
                   "1", "--out", f"{d}/a_ok"], "ok", inputs=[src]))  # fmt: skip
    return T


GTF = (
    'chrX\tHAVANA\texon\t100\t200\t.\t+\t.\tgene_id "ENSG00000000001.20"; transcript_id "T1";\n'
    'chrX\tHAVANA\texon\t150\t300\t.\t+\t.\tgene_id "ENSG00000000001.20"; transcript_id "T2";\n'
    'chrY\tHAVANA\texon\t100\t200\t.\t+\t.\tgene_id "ENSG00000000001.20_PAR_Y"; transcript_id "T1";\n'
    '1\tensembl\texon\t10\t19\t.\t+\t.\tgene_id "ENSG00000000002"; gene_biotype "lncRNA";\n'
    'X\tensembl\texon\t1\t50\t.\t+\t.\tgene_id "ENSG00000000003"; transcript_id "T4";\n'
    'Y\tensembl\texon\t1\t50\t.\t+\t.\tgene_id "ENSG00000000003"; transcript_id "T4";\n'
)


def lengths_trials(d):
    import anndata as ad

    from bulkformer.data.oracle import log1p_tpm_ref

    T = []
    want = {"ENSG00000000001": 201, "ENSG00000000001_PAR_Y": 101, "ENSG00000000002": 10,
            "ENSG00000000003": 50}  # fmt: skip

    def lengths_are(want):
        def check(out):
            df = pd.read_csv(out, sep="\t", comment="#")
            got = dict(zip(df["gene_id"], df["length"]))
            return None if got == want else f"lengths {got}"

        return check

    for name, data in (("plain.gtf", GTF.encode()), ("gz.gtf.gz", gzip.compress(GTF.encode())),
                       ("crlf.gtf", GTF.replace("\n", "\r\n").encode())):  # fmt: skip
        g = f"{d}/{name}"
        open(g, "wb").write(data)
        T.append(Trial("gene lengths", f"genes lengths {name}", ["genes", "lengths", "--gtf", g,
                       "--out", f"{d}/{name}.tsv"], "ok", inputs=[g],
                       check=lambda out, n=name: lengths_are(want)(f"{d}/{n}.tsv")))  # fmt: skip
    existing = f"{d}/existing.tsv"
    open(existing, "w").write("precious\n")
    g = f"{d}/plain.gtf"
    T.append(Trial("gene lengths", "--out exists", ["genes", "lengths", "--gtf", g, "--out",
                   existing], "error", token="existing.tsv", inputs=[g, existing]))  # fmt: skip
    T.append(Trial("gene lengths", "--out is the GTF", ["genes", "lengths", "--gtf", g, "--out", g,
                   "--force"], "error", token="plain.gtf", inputs=[g]))  # fmt: skip
    for name, data in (("nonexon.gtf", GTF.replace("exon", "CDS")),
                       ("badcoord.gtf", GTF.replace("\t100\t200", "\tA\tB")),
                       ("noid.gtf", GTF.replace("gene_id", "gene_name")),
                       ("empty.gtf", "# nothing\n")):  # fmt: skip
        b = f"{d}/{name}"
        open(b, "w").write(data)
        T.append(Trial("gene lengths", f"bad GTF {name}", ["genes", "lengths", "--gtf", b,
                       "--out", existing, "--force"], "error", token=name,
                       inputs=[b, existing]))  # fmt: skip
    # preprocess --lengths
    ref, rp = _ref(d, 40)
    rng = np.random.default_rng(9)
    ids = [f"{g}.2" for g in ref.gene_ids]
    x = rng.poisson(rng.uniform(1, 50, 40), (10, 40)).astype(np.float64)
    h = f"{d}/len.h5ad"
    ad.AnnData(X=x.astype(np.float32), obs=pd.DataFrame(index=[f"S{i}" for i in range(10)]),
               var=pd.DataFrame(index=ids)).write_h5ad(h)  # fmt: skip
    L = rng.uniform(300, 30000, 40)
    L[[4, 9]] = np.nan

    def table(path, rows):
        open(path, "w").write("gene_id\tlength\n" + "".join(f"{a}\t{b}\n" for a, b in rows))
        return path

    good = table(f"{d}/lens.tsv", [(g, v) for g, v in zip(ref.gene_ids, L) if np.isfinite(v)])

    def tpm_is(lengths):
        def check(out):
            z = _expr(out).astype(np.float64)
            with np.load(f"{out}/stats.npz") as s:
                got = z * s["std"] + s["mean"]
                ok = s["std"] > 0
            w = log1p_tpm_ref(x, lengths)
            miss = np.load(f"{out}/missing.npy")[0].astype(bool)
            if not np.array_equal(miss, ~np.isfinite(lengths)):
                return f"missing columns {np.flatnonzero(miss)}"
            err = np.abs(got - w)[:, ok & ~miss].max()
            return None if err < 5e-3 * np.abs(w).max() else f"max error {err}"

        return check

    base = ["preprocess", "--h5ad", h, "--reference", rp, "--min-nonzero", "1", "--splits",
            "1,0,0", "--no-progress"]  # fmt: skip
    T.append(Trial("gene lengths", "--lengths, fallback 1000", [*base, "--lengths", good, "--out",
                   f"{d}/l1"], "ok", inputs=[good, h],
                   check=tpm_is(np.where(np.isfinite(L), L, 1000.0))))  # fmt: skip
    T.append(Trial("gene lengths", "--lengths, fallback none", [*base, "--lengths", good,
                   "--fallback-length", "none", "--out", f"{d}/l2"], "ok", inputs=[good, h],
                   check=tpm_is(L)))  # fmt: skip
    T.append(Trial("gene lengths", "--lengths, fallback 2500", [*base, "--lengths", good,
                   "--fallback-length", "2500", "--out", f"{d}/l3"], "ok", inputs=[good, h],
                   check=tpm_is(np.where(np.isfinite(L), L, 2500.0))))  # fmt: skip
    for name, rows in (
        ("symbols", [(f"GENE{i}", 100) for i in range(40)]),
        ("negative", [(ref.gene_ids[0], -3)]),
        ("zero", [(ref.gene_ids[0], 0)]),
        ("text", [(ref.gene_ids[0], "long")]),
        ("dup", [(ref.gene_ids[0] + ".1", 10), (ref.gene_ids[0] + ".2", 20)]),
    ):
        p = table(f"{d}/bad_{name}.tsv", rows)
        T.append(Trial("gene lengths", f"--lengths {name}", [*base, "--lengths", p, "--out",
                       f"{d}/lb_{name}"], "error", token=os.path.basename(p), inputs=[p, h]))  # fmt: skip
    p = f"{d}/bad_header.tsv"
    open(p, "w").write("id,bp\nENSG00000000001,100\n")
    T.append(Trial("gene lengths", "--lengths CSV header", [*base, "--lengths", p, "--out",
                   f"{d}/lb_h"], "error", token="bad_header.tsv", inputs=[p, h]))  # fmt: skip
    T.append(Trial("gene lengths", "--lengths missing file", [*base, "--lengths",
                   f"{d}/nope.tsv", "--out", f"{d}/lb_n"], "error", token="nope.tsv"))  # fmt: skip
    return T


def uniprot_trials(d):
    import torch

    try:
        import esm
    except ImportError:
        return []
    import argparse as ap

    from bulkformer.data.genes import GeneReference

    torch.manual_seed(0)
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    model = esm.model.esm2.ESM2(num_layers=2, embed_dim=32, attention_heads=4, alphabet=alphabet)
    cfg = ap.Namespace(encoder_layers=2, encoder_embed_dim=32, encoder_attention_heads=4,
                       token_dropout=model.token_dropout)  # fmt: skip
    state = {f"encoder.sentence_encoder.{k}": v for k, v in model.state_dict().items()}
    state = {k: v for k, v in state.items() if "contact_head.regression" not in k}
    ckpt = f"{d}/tiny.pt"
    torch.save({"cfg": {"model": cfg}, "model": state}, ckpt)
    ref = GeneReference(np.array([f"ENSG{i:011d}" for i in range(1, 6)], dtype=object),
                        np.array(["TP53", "BRCA1", "DUP", "DUP", "EGFR"], dtype=object),
                        np.full(5, 1000.0))  # fmt: skip
    rp = f"{d}/uref.tsv"
    ref.to_tsv(rp)
    rng = np.random.default_rng(1)
    AA = np.array(list("ACDEFGHIKLMNPQRSTVWY"))

    def seq(n):
        return "".join(rng.choice(AA, n))

    recs = {
        "sp|P04637|P53_HUMAN Cellular tumor antigen p53 OS=Homo sapiens OX=9606 GN=TP53 PE=1 SV=4": seq(
            30
        ),
        "sp|P04637-2|P53_HUMAN Isoform 2 of p53 OS=Homo sapiens OX=9606 GN=TP53": seq(50),
        "tr|A0A024R1R8|A0A024R1R8_HUMAN p53 OS=Homo sapiens OX=9606 GN=TP53 PE=1 SV=1": seq(70),
        "sp|P38398|BRCA1_HUMAN Breast cancer type 1 OS=Homo sapiens OX=9606 GN=BRCA1 PE=1": seq(40),
        "sp|Q00000|DUP_HUMAN Made up OS=Homo sapiens OX=9606 GN=DUP PE=1": seq(20),
        "sp|P00533|EGFR_HUMAN EGF receptor OS=Homo sapiens OX=9606 GN=egfr PE=1 SV=2": seq(25),
    }
    text = "".join(f">{h}\n{s}\n" for h, s in recs.items())
    T = []

    def chosen(want):
        def check(out):
            from safetensors import safe_open

            with safe_open(out, framework="numpy") as f:
                has = f.get_tensor("has_protein").astype(bool).tolist()
                meta = f.metadata()
            if has != want:
                return f"has_protein {has}, expected {want}"
            text = meta.get("protein_mapping", "")
            if "gene symbol" in text and "ambiguous symbol" not in text:
                return "ambiguous symbols not reported"
            return None

        return check

    def embed(fa, out, *extra):
        return ["esm-embed", "--pep", fa, "--model", ckpt, "--genes", rp, "--no-progress",
                "--device", "cpu", "--out", out, *extra]  # fmt: skip

    for name, data in (("sp.fasta", text.encode()), ("sp.fasta.gz", gzip.compress(text.encode())),
                       ("crlf.fasta", text.replace("\n", "\r\n").encode())):  # fmt: skip
        p = f"{d}/{name}"
        open(p, "wb").write(data)
        T.append(Trial("uniprot fasta", f"symbols {name}", embed(p, f"{d}/{name}.st"), "ok",
                       inputs=[p], check=lambda o, n=name: chosen([True, True, False, False, True])(
                           f"{d}/{n}.st")))  # fmt: skip
    p = f"{d}/sp.fasta"
    m = f"{d}/map.tsv"
    open(m, "w").write("accession\tgene_id\nP04637\tENSG00000000001.3\nQ00000\tENSG00000000004\n")
    T.append(Trial("uniprot fasta", "mapping table", embed(p, f"{d}/map.st", "--mapping", m), "ok",
                   inputs=[p, m], check=lambda o: chosen([True, False, False, True, False])(
                       f"{d}/map.st")))  # fmt: skip
    for name, content in (("nogn.fasta", ">sp|P1|X_HUMAN no symbol\nMAAA\n"),
                          ("mixed.fasta", text + ">ENSP1 pep gene:ENSG1 transcript:ENST1\nMA\n"),
                          ("dupacc.fasta", text + ">sp|P04637|P53_HUMAN again GN=TP53\nMA\n"),
                          ("badres.fasta", text.replace(list(recs.values())[3], "MA-J1")),
                          ("empty.fasta", ""),
                          ("table.fasta", "accession\tgene\nP1\tG\n")):  # fmt: skip
        q = f"{d}/{name}"
        open(q, "w").write(content)
        T.append(Trial("uniprot fasta", f"bad {name}", embed(q, f"{d}/{name}.st"), "error",
                       token=name, inputs=[q]))  # fmt: skip
    for name, content in (("map1.tsv", "onecolumn\nP04637\n"), ("mapbad.tsv", "a\tb\nX\tY\n")):
        q = f"{d}/{name}"
        open(q, "w").write(content)
        T.append(Trial("uniprot fasta", f"bad mapping {name}", embed(p, f"{d}/{name}.st",
                       "--mapping", q), "error", token=name if name == "map1.tsv" else "sp.fasta",
                       inputs=[q, p]))  # fmt: skip
    return T


def model_trials(d):
    import torch

    from bulkformer.data.corpus import CorpusStats
    from bulkformer.data.genes import GeneReference
    from bulkformer.model import BulkFormer, BulkFormerConfig
    from bulkformer.model.pretrained import export_pretrained

    ref = GeneReference(np.array([f"ENSG{i:011d}" for i in range(16)], dtype=object),
                        np.array([f"G{i}" for i in range(16)], dtype=object), np.full(16, 1e3))  # fmt: skip
    cfg = BulkFormerConfig(n_genes=16, d_esm=8, d_model=16, n_heads=2, n_layers=1,
                           context_hidden=8, reference_id=ref.id)  # fmt: skip
    model = BulkFormer(cfg, esm=torch.zeros(16, 8))
    stats = CorpusStats(np.zeros(16), np.ones(16), np.ones(16), ref.id, 1)
    clean = export_pretrained(model, ref, stats, f"{d}/pt")
    # a corpus to embed
    import anndata as ad

    x = np.random.default_rng(0).poisson(20, (6, 16)).astype(np.float32)
    h = f"{d}/e.h5ad"
    ad.AnnData(X=x, obs=pd.DataFrame(index=[f"S{i}" for i in range(6)]),
               var=pd.DataFrame(index=ref.gene_ids)).write_h5ad(h)  # fmt: skip
    T = []
    w = clean / "model.safetensors"
    raw = w.read_bytes()
    hlen = int.from_bytes(raw[:8], "little")
    for i, (name, data) in enumerate(
        (
            ("header length", (10**12).to_bytes(8, "little") + raw[8:]),
            ("header json", raw[:8] + b"{" * 16 + raw[24:]),
            ("truncated", raw[: len(raw) // 2]),
            ("empty", b""),
            ("header byte", raw[: 8 + hlen // 2] + b"\x00" + raw[9 + hlen // 2 :]),
        )
    ):
        dd = f"{d}/pt_{i}"
        shutil.copytree(clean, dd)
        open(f"{dd}/model.safetensors", "wb").write(data)
        T.append(Trial("damaged model", f"model.safetensors {name}", ["embed", "--checkpoint", dd,
                       "--input", h, "--out", f"{d}/emb_{i}.npy"], "error", token="model.safetensors",
                       inputs=[dd, h]))  # fmt: skip
    return T


# ============================================================================ running
def run_trials(trials, workdir):
    results = []
    i = 0
    while i < len(trials):
        env = dict(os.environ)
        proc = subprocess.Popen([sys.executable, "-c", DRIVER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, cwd=workdir)  # fmt: skip
        while i < len(trials):
            t = trials[i]
            before = {p: _hash(p) for p in t.inputs}
            cleanup = t.pre() if t.pre else None
            try:
                proc.stdin.write(json.dumps({"argv": t.argv}) + "\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
            except BrokenPipeError:
                line = ""
            finally:
                if cleanup:
                    cleanup()
            after = {p: _hash(p) for p in t.inputs}
            lost = [p for p in t.inputs if before[p] != after[p]]
            if not line:  # the child died: a crash
                proc.wait()
                results.append((t, {"rc": proc.returncode, "err": proc.stderr.read()[-500:]},
                                lost, "crash"))  # fmt: skip
                i += 1
                break
            results.append((t, json.loads(line), lost, None))
            i += 1
        else:
            proc.stdin.close()
            proc.wait()
    return results


def judge(t, r, lost, crash):
    """(column, detail) for one trial."""
    if crash:
        return "crashes", f"child died with status {r['rc']}: {r['err'][-200:]}"
    if lost:
        return "data loss", f"changed or removed: {lost}"
    rc, err = r["rc"], r["err"]
    if "Traceback" in err:
        return "crashes", err[-300:]
    if rc == 0:
        if t.expect == "error":
            return "silent wrong", "exit 0 where an error was due"
        if t.check is not None:
            problem = t.check(t.argv[t.argv.index("--out") + 1] if "--out" in t.argv else None)
            if problem:
                return (
                    "changed, undetectable" if t.flip == "metadata" else "silent wrong"
                ), problem
        return "correct", ""
    lines = [ln for ln in err.splitlines() if ln.startswith("bulkformer") or ln.startswith("usage")]
    msg = [ln for ln in err.splitlines() if "error:" in ln]
    if t.expect == "ok":
        return "unclear errors", f"failed where a result was due: {msg[-1:] or err[-200:]}"
    if rc == 70 or not msg:
        return "unclear errors", (msg or [err[-200:]])[-1]
    tok = t.token
    if tok and tok not in msg[-1]:
        return "unclear errors", f"does not name {tok!r}: {msg[-1]}"
    if rc not in (1, 2) or len([m for m in msg if m.startswith("bulkformer")]) != 1:
        return "unclear errors", f"exit {rc}, {len(lines)} lines: {msg[-1]}"
    return "clear errors", msg[-1]


COLUMNS = ["trials", "correct", "clear errors", "unclear errors", "crashes", "silent wrong",
           "data loss"]  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10, help="byte-flip seeds per file (10)")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    ap.add_argument("--only", metavar="CATEGORY", help="run the categories containing this")
    ap.add_argument("--verbose", action="store_true", help="print every trial")
    args = ap.parse_args(argv)
    d = args.keep or tempfile.mkdtemp(prefix="trust-")
    os.makedirs(d, exist_ok=True)
    builders = [archs4_trials, lambda d: fuzz_trials(d, args.seeds), gdc_trials, h5ad_trials,
                args_trials, lengths_trials, uniprot_trials, model_trials]  # fmt: skip
    trials = []
    for b in builders:
        sub = os.path.join(d, f"b{len(trials)}")
        os.makedirs(sub, exist_ok=True)
        with contextlib.redirect_stderr(open(os.devnull, "w")):
            trials += [t for t in b(sub) if t.expect != "skip"]
    if args.only:
        trials = [t for t in trials if args.only in t.cat]
    results = run_trials(trials, d)
    table: dict = {}
    notes = []
    for t, r, lost, crash in results:
        col, detail = judge(t, r, lost, crash)
        row = table.setdefault(t.cat, dict.fromkeys(COLUMNS + ["changed, undetectable"], 0))
        row["trials"] += 1
        row[col] += 1
        if args.verbose or col not in ("correct", "clear errors"):
            notes.append(f"  [{col}] {t.cat} / {t.name}: {detail}")
        elif col == "clear errors" and args.verbose:
            notes.append(f"  [{col}] {t.cat} / {t.name}: {detail}")
    w = max(len(c) for c in table) + 2
    print("category".ljust(w) + "  ".join(f"{c:>14s}" for c in COLUMNS))
    for cat, row in table.items():
        print(cat.ljust(w) + "  ".join(f"{row[c]:>14d}" for c in COLUMNS))
    tot = {c: sum(r[c] for r in table.values()) for c in COLUMNS}
    print("all".ljust(w) + "  ".join(f"{tot[c]:>14d}" for c in COLUMNS))
    und = sum(r["changed, undetectable"] for r in table.values())
    if und:
        print(f"\nchanged, undetectable (a flipped metadata byte read as another value; HDF5 "
              f"keeps no checksum of raw data): {und}")  # fmt: skip
    if notes:
        print("\n" + "\n".join(notes))
    if not args.keep:
        shutil.rmtree(d, ignore_errors=True)
    bad = sum(tot[c] for c in ("unclear errors", "crashes", "silent wrong", "data loss"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
