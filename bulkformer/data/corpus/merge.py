"""Joining the parts of a sharded build: :func:`merge_parts`.

Each part (``build_corpus(..., shard=(i, n))``) ran phase 1 over a contiguous range of blocks
and kept its raw float32 ``log1p.npy``; the merge re-folds the training statistics block by
block in the same order as a single run (bit-identical, through the same :func:`fold`), then
standardizes with the writer's own steps (:mod:`.build`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..._io import json_bytes, npy_bytes, write_atomic
from ..normalize import GeneStats
from ._npy import NpyRows, open_rows
from .build import (
    finish,
    mark_corpus_done,
    new_manifest,
    open_partial,
    record_finish,
    rows_summary,
    standardize,
    timestamp,
    write_corpus_tables,
)
from .guard import check_out, output_lock
from .progress import Progress, stamp
from .reader import Corpus, CorpusPart
from .stats import CorpusStats, fold

log = logging.getLogger(__name__)


def merge_parts(
    parts: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = True,
    durable: bool = False,
) -> Corpus:
    """Join the parts written by ``build_corpus(..., shard=(i, n))`` into one corpus.

    The training statistics are re-folded from the parts' float32 ``log1p.npy`` block by block
    in the order of a single build, so the result is byte-identical to building in one go
    (the manifest's ``build`` section aside). Parts must come from the same inputs and
    parameters, all ``n`` of them exactly once (any order). ``durable`` as in
    :func:`build_corpus`; ``overwrite`` replaces only a bulkformer corpus, and a second writer
    of ``out`` fails at once (:class:`bulkformer._io.LockedError`), as there.
    """
    t0 = time.time()
    parts = list(parts)
    out = check_out(out, overwrite, parts)  # fail fast; checked again under the lock
    with output_lock(out, "corpus merge"):
        return _merge(parts, out, t0, overwrite=overwrite, progress=progress, durable=durable)


def _merge(parts, out: Path, t0: float, *, overwrite: bool, progress: bool, durable: bool):
    """:func:`merge_parts` under the output's lock."""
    check_out(out, overwrite, parts)
    parts = [CorpusPart.open(p) for p in parts]
    if not parts:
        raise ValueError("merge: no parts given")
    first = parts[0].manifest
    ident = ("reference", "parameters", "sources")
    for p in parts[1:]:
        for k in ident:
            if p.manifest[k] != first[k]:
                raise ValueError(
                    f"merge: {p.path} differs from {parts[0].path} in its {k!r}; parts must be "
                    "built from the same inputs with the same parameters"
                )
    n = first["shard"]["count"]
    idx = sorted(p.manifest["shard"]["index"] for p in parts)
    if idx != list(range(n)):
        raise ValueError(
            f"merge: parts cover shards {idx} of {n}; need each of 0…{n - 1} exactly once"
        )
    parts.sort(key=lambda p: p.manifest["shard"]["index"])
    key = {k: first[k] for k in ident}
    key["shard"] = None
    plan_key = dict(key)
    plan_key["merged_from"] = [str(p.path.resolve()) for p in parts]
    partial, old = open_partial(out, plan_key, "corpus", overwrite)
    build = {"started": timestamp(), "resumed": 0, "merged_from": [str(p.path) for p in parts]}
    if old is not None:
        build = old.get("build", build)
        build["resumed"] = int(build.get("resumed", 0)) + 1
    manifest = new_manifest(key, "corpus", {"plan": plan_key, "build": build})
    G = int(first["reference"]["n_genes"])
    prog = Progress(partial / "progress.npz", G)
    files: list[NpyRows] = []
    try:
        samples = [p.samples for p in parts]
        missing = parts[0].missing
        if old is None:
            shutil.copyfile(parts[0].path / "genes.tsv", partial / "genes.tsv")
            (partial / "missing.npy").write_bytes(npy_bytes(missing))
        logs = [NpyRows(p.path / "log1p.npy") for p in parts]
        files.extend(logs)
        segs = [(f, len(s)) for f, s in zip(logs, samples)]
        params = first["parameters"]
        if prog.phase == 1:
            all_samples = pd.concat(samples, ignore_index=True).drop(columns=["block"])
            if params["stats"] is None:
                for f, s in zip(logs, samples):
                    _refold(prog.stats, f, s, missing)
                n_train = int((all_samples["split"] == "train").sum())
                st = CorpusStats.from_gene_stats(prog.stats, first["reference"]["id"], n_train)
            else:
                st = CorpusStats.load(parts[0].path / "stats.npz")
            excl = [p.excluded for p in parts]
            excluded = pd.concat([e for e in excl if len(e)] or excl[:1], ignore_index=True)
            write_corpus_tables(partial, all_samples, excluded, st)
            manifest["rows"] = rows_summary(all_samples, excluded)
            prog.phase, prog.blocks_done, prog.rows_done = 2, 0, 0
            prog.commit()
            write_atomic(partial / "manifest.json", json_bytes(manifest))
        else:
            manifest["rows"] = old["rows"]
        st = CorpusStats.load(partial / "stats.npz")
        src_index = pd.read_csv(partial / "samples.tsv", sep="\t", usecols=["source_index"])
        N = int(sum(n for _, n in segs))

        def commit():
            if durable:
                for f in files:
                    f.sync()
            stamp(manifest, durable)
            prog.commit()
            manifest["progress"] = {"phase": "standardize", "rows_done": prog.rows_done, "total": N}
            write_atomic(partial / "manifest.json", json_bytes(manifest))

        expr = open_rows(partial / "expression.npy", (N, G), np.float16)
        files.append(expr)
        standardize(
            segs,
            expr,
            src_index["source_index"].to_numpy(),
            st,
            missing,
            prog,
            int(params["block_size"]),
            commit,
            progress,
        )
        for f in files:
            f.close()
        mark_corpus_done(manifest)
        record_finish(manifest, t0, None)
        write_atomic(partial / "manifest.json", json_bytes(manifest))
        (partial / "progress.npz").unlink(missing_ok=True)
    except BaseException:
        for f in files:
            f.close()
        log.error("merge interrupted; rerun the same command to resume from %s", partial)
        raise
    finish(partial, out, overwrite)
    return Corpus.open(out)


def _refold(stats: GeneStats, log1p: NpyRows, samples: pd.DataFrame, missing) -> None:
    """Fold the training rows of a part into ``stats``, one source block at a time."""
    blocks = samples["block"].to_numpy()
    train = (samples["split"] == "train").to_numpy()
    src = samples["source_index"].to_numpy()
    if len(blocks) == 0:
        return
    cuts = np.flatnonzero(np.diff(blocks)) + 1
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(blocks)]):
        v = log1p.read(int(lo), int(hi - lo))
        bad = fold(stats, v, ~missing[src[lo]], train[lo:hi])
        if bad >= 0:
            raise ValueError(f"{log1p.path}: row {int(lo) + bad} holds NaN/inf (corrupt part?)")
