"""Building a corpus: :func:`build_corpus`, the two-phase writer and in-place standardization.

Phase 1 reads row blocks of ``log1p(TPM)`` into float32 rows while accumulating per-gene
statistics over the training rows that pass QC; phase 2 standardizes them into float16
z-scores, in place (the float32 rows sit in ``expression.npy`` itself, behind room for one
block, and are overwritten as the conversion advances; see :func:`standardize`). With given
statistics, z is written while reading and phase 2 only drops the rows QC excluded. The build
runs in ``OUT.partial`` and is renamed to ``OUT`` at the end; after a kill, rerunning the same
call resumes from the last committed block and gives byte-identical files (the manifest's
``build`` section, which holds timings, aside).

The steps :func:`~bulkformer.data.corpus.merge_parts` shares with a build (the partial
directory, the progress record, the corpus tables, :func:`standardize`) live here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from ..._io import json_bytes, npy_bytes, npz_bytes, replace_dir, tsv_bytes, write_atomic
from ..genes import GeneReference
from ..source import Block, ExpressionSource
from ._npy import NpyRows, open_rows, set_npy_rows
from .guard import check_out, corpus_manifest, foreign_entries, not_replaceable, output_lock
from .plan import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_MIN_NONZERO,
    DEFAULT_SPLITS,
    SPLIT_NAMES,
    Plan,
    make_plan,
    missing_mask,
    parse_shard,
)
from .progress import Progress, progress_bar, resumable, stamp
from .reader import FORMAT, FORMAT_VERSION, Corpus, CorpusPart
from .stats import CorpusStats, fold

log = logging.getLogger(__name__)

#: layout of the files in ``OUT.partial`` (2: float32 rows inside expression.npy, converted in
#: place); a partial build with another layout is not resumed
PARTIAL_LAYOUT = 2
_LAYOUT_KEYS = ("partial_layout", "blocks_sha256")


#: progress is committed at most this often (and after the last block of each phase); a
#: module setting (``bulkformer.data.corpus.build.COMMIT_SECONDS = …``) for builds and merges
COMMIT_SECONDS = 1.0


# ====================================================================== build
def open_partial(out: Path, key: dict, kind: str, overwrite: bool) -> tuple[Path, dict | None]:
    """Create ``OUT.partial`` or find the compatible one a killed build left (returned manifest)."""
    partial = out.with_name(out.name + ".partial")
    if partial.exists() or partial.is_symlink():
        old = corpus_manifest(partial)
        if old is None:
            # no manifest: a build that stopped before its first commit (killed, or the disk
            # filled) left only files of its own; nothing in it counts, so start over
            mf = partial / "manifest.json"
            if (
                partial.is_symlink()
                or not partial.is_dir()
                or mf.exists()
                or foreign_entries(partial)
            ):
                why = not_replaceable(partial)
                raise FileExistsError(
                    f"{partial} {why}, so it is not an interrupted build of bulkformer; "
                    "nothing was deleted: move it away or choose another output"
                )
            log.info("%s holds a build that never committed progress: starting over", partial)
            shutil.rmtree(partial)
            partial.mkdir(parents=True)
            return partial, None
        if foreign_entries(partial):
            raise FileExistsError(
                f"{partial} {not_replaceable(partial)}: not only an interrupted build; nothing "
                "was deleted: move those files away, then rerun"
            )
        if old.get("kind") == kind and old.get("plan") == key:
            if resumable(old, partial):
                log.info("resuming the interrupted build in %s", partial)
                return partial, old
            shutil.rmtree(partial)
            partial.mkdir(parents=True)
            return partial, None
        if not overwrite:

            def inputs(plan: dict) -> dict:  # the plan without how the partial is laid out
                return {k: v for k, v in plan.items() if k not in _LAYOUT_KEYS}

            if (
                old is not None
                and old.get("kind") == kind
                and inputs(old.get("plan") or {}) == inputs(key)
            ):
                raise FileExistsError(
                    f"{partial} holds an interrupted build of the same inputs written by another "
                    "version of bulkformer (its files or blocks are laid out differently), so it "
                    "cannot be resumed; "
                    "pass overwrite=True (--overwrite) to start over"
                )
            raise FileExistsError(
                f"{partial} holds an interrupted build with different inputs or parameters; "
                "rerun the original command to finish it, or pass overwrite=True "
                "(--overwrite) to discard it"
            )
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return partial, None


def finish(partial: Path, out: Path, overwrite: bool) -> None:
    """Move the finished ``partial`` to ``out`` (replacing it only with ``overwrite``)."""
    if out.exists() or out.is_symlink():
        why = None if overwrite else "appeared while building"
        why = why or not_replaceable(out)
        if why is not None:
            raise FileExistsError(f"{out} {why}; the new corpus is at {partial}")
    replace_dir(partial, out)


def new_manifest(plan_key: dict, kind: str, extra: dict) -> dict:
    from ..._version import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "bulkformer_version": __version__,
        **plan_key,
        **extra,
    }


def build_corpus(
    sources: ExpressionSource | Sequence[ExpressionSource],
    out: str | os.PathLike,
    reference: GeneReference | None = None,
    *,
    label: str | None = None,
    min_nonzero: int = DEFAULT_MIN_NONZERO,
    splits: Sequence[float] = DEFAULT_SPLITS,
    seed: int = 0,
    stats: CorpusStats | str | os.PathLike | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    threads: int | None = None,
    overwrite: bool = False,
    shard: tuple[int, int] | str | None = None,
    progress: bool = True,
    durable: bool = False,
) -> Corpus | CorpusPart:
    """Build a standardized, reference-aligned training corpus from expression sources.

    Parameters
    ----------
    sources : one :class:`~bulkformer.data.source.ExpressionSource` or several (their sample
        IDs must be unique across all of them).
    out : output directory (written as ``out.partial`` then renamed).
    reference : gene reference; default the embedded one (``GeneReference.default()``).
    label : sample metadata column holding a class label (kept in samples.tsv; the split is
        stratified by it). Must exist in every source.
    min_nonzero : QC — samples with fewer non-zero source genes are excluded (excluded.tsv).
    splits : (train, val, test) fractions, normalized; see :func:`assign_splits`. The split is
        assigned over all input samples before QC, so the fractions hold exactly on the input.
    seed : split seed.
    stats : standardize with these statistics (a :class:`CorpusStats`, a ``stats.npz`` or a
        corpus directory) instead of the training split's own — how new data is made to look
        like the pretraining corpus. Their reference must be ``reference``.
    block_size : samples per block (memory ≈ a few × block_size × G × 8 bytes).
    threads : passed to the sources' ``read_block``.
    overwrite : replace an existing ``out`` (and discard an incompatible ``out.partial``).
    shard : ``(i, n)`` or ``"i/n"``: write part i of n (a contiguous range of blocks) as a
        :class:`CorpusPart`, to be joined by :func:`merge_parts`.
    progress : show tqdm progress bars.
    durable : fsync the data before every progress commit, so that the partial build (and the
        finished corpus) survive a power failure or OS crash, at the cost of writing every byte
        to the disk while building. Without it (the default) a killed build still resumes
        exactly — the kernel keeps what a process wrote — but after a reboot an unfinished
        build starts over, and a corpus finished in the last seconds before a crash may not
        be on disk yet (like files written by numpy, h5py or anndata).

    Returns
    -------
    :class:`Corpus` (or :class:`CorpusPart` with ``shard``).

    Raises
    ------
    ValueError
        Bad input (no gene overlap, NaN / negative / non-integer counts, duplicate sample IDs,
        absent label column, statistics of another reference); no partial output is left.
    FileExistsError
        ``out`` exists and ``overwrite`` is false, or ``out`` (or ``out.partial``) is not a
        bulkformer corpus: ``overwrite`` replaces nothing else. ``out`` is an input, holds one,
        or is the current directory (or above it): ValueError.
    bulkformer._io.LockedError
        Another process is writing ``out`` (its pid and host are named).
    """
    t0 = time.time()
    srcs = [sources] if isinstance(sources, ExpressionSource) else list(sources)
    inputs = [getattr(s, "path", None) for s in srcs]
    if stats is not None and not isinstance(stats, CorpusStats):
        inputs.append(stats)
    out = check_out(out, overwrite, inputs)  # fail fast; checked again under the lock
    with output_lock(out):
        return _build(
            srcs,
            out,
            reference,
            inputs,
            t0,
            label=label,
            min_nonzero=min_nonzero,
            splits=splits,
            seed=seed,
            stats=stats,
            block_size=block_size,
            threads=threads,
            overwrite=overwrite,
            shard=shard,
            progress=progress,
            durable=durable,
        )


def _build(
    sources,
    out,
    reference,
    inputs,
    t0,
    *,
    label,
    min_nonzero,
    splits,
    seed,
    stats,
    block_size,
    threads,
    overwrite,
    shard,
    progress,
    durable,
):
    """:func:`build_corpus` under the output's lock."""
    check_out(out, overwrite, inputs)
    if reference is None:
        if not hasattr(GeneReference, "default"):
            raise ValueError("no embedded gene reference in this build: pass reference=")
        reference = GeneReference.default()  # type: ignore[attr-defined]
    if stats is not None and not isinstance(stats, CorpusStats):
        stats = CorpusStats.load(stats)
    if stats is not None:
        reference.check_same(stats.reference_id, "the statistics given with stats=")
        if len(stats.mean) != len(reference):
            raise ValueError(f"stats have {len(stats.mean)} genes, reference {len(reference)}")
    sh = parse_shard(shard)
    plan = make_plan(
        sources,
        reference,
        label=label,
        min_nonzero=min_nonzero,
        splits=splits,
        seed=seed,
        stats=stats,
        block_size=block_size,
        shard=sh,
    )
    kind = "corpus" if sh is None else "part"
    key = dict(plan.key)
    key["shard"] = None if sh is None else {"index": sh[0], "count": sh[1]}
    # the partial's file layout is part of what a resume must match (older partials differ)
    plan_id = dict(
        key,
        partial_layout=PARTIAL_LAYOUT,
        blocks_sha256=hashlib.sha256(np.ascontiguousarray(plan.blocks).tobytes()).hexdigest(),
    )
    partial, old = open_partial(out, plan_id, kind, overwrite)
    build = {"started": (old or {}).get("build", {}).get("started", timestamp()), "resumed": 0}
    if old is not None:
        build["resumed"] = int(old.get("build", {}).get("resumed", 0)) + 1
    try:
        if old is None:
            reference.to_tsv(partial / "genes.tsv")
            (partial / "missing.npy").write_bytes(npy_bytes(missing_mask(plan)))
        manifest = new_manifest(key, kind, {"plan": plan_id, "build": build})
        if old is not None and "rows" in old:
            manifest["rows"] = old["rows"]
        writer = _Writer(
            partial, plan, manifest, stats, threads, progress, durable, sharded=sh is not None
        )
        writer.run_read()
        if sh is not None:
            writer.finish_part()
        else:
            writer.finish_tables()
            writer.run_standardize()
            writer.finish_corpus()
    except ValueError:
        writer_close = locals().get("writer")
        if writer_close is not None:
            writer_close.close()
        shutil.rmtree(partial, ignore_errors=True)  # bad input: leave nothing behind
        raise
    except BaseException:
        log.error("build interrupted; rerun the same command to resume from %s", partial)
        raise
    manifest = json.loads((partial / "manifest.json").read_text())
    record_finish(manifest, t0, threads)
    write_atomic(partial / "manifest.json", json_bytes(manifest))
    finish(partial, out, overwrite)
    return Corpus.open(out) if sh is None else CorpusPart.open(out)


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class _Writer:
    """Phases of one build in ``partial``; every phase resumes from ``progress.npz``."""

    def __init__(
        self, partial, plan: Plan, manifest, stats, threads, progress, durable=False, sharded=False
    ):
        self.dir = partial
        self.sharded = sharded
        self.durable = durable
        # with given statistics a whole corpus (not a shard, whose log1p rows a merge needs) is
        # standardized as it is read: z goes straight to expression.npy, no float32 detour
        self.direct = stats is not None and not sharded
        self._gap = int(plan.key["parameters"]["block_size"])
        self.plan = plan
        self.manifest = manifest
        self.given_stats = stats
        self.threads = threads
        self.show = progress
        self.G = len(plan.reference)
        r0, r1 = plan.shard_rows
        self.r0, self.n_in = r0, r1 - r0
        self.prog = Progress(partial / "progress.npz", self.G)
        self.files: list[NpyRows] = []

    # -------------------------------------------------------------- helpers
    def _npy(self, name, shape, dtype) -> NpyRows:
        f = open_rows(self.dir / name, shape, dtype)
        self.files.append(f)
        return f

    def close(self) -> None:
        for f in self.files:
            f.close()
        self.files = []

    def _commit(self, phase_name: str, total: int) -> None:
        if self.durable:  # data on disk before the progress that claims it
            for f in self.files:
                f.sync()
        stamp(self.manifest, self.durable)
        self.prog.commit()
        self.manifest["progress"] = {
            "phase": phase_name,
            "blocks_done": self.prog.blocks_done,
            "rows_written": self.prog.rows_written,
            "rows_done": self.prog.rows_done,
            "total": total,
        }
        write_atomic(self.dir / "manifest.json", json_bytes(self.manifest))

    # -------------------------------------------------------------- phase 1
    def run_read(self) -> None:
        """Read every block of the shard once: log1p(TPM) → log1p.npy, QC, training stats (or,
        with given statistics, z → expression.npy)."""
        from ... import _C

        plan, prog = self.plan, self.prog
        b0, b1 = plan.shard_blocks
        if self.sharded:  # a merge needs the part's float32 rows
            self.log1p = self._npy("log1p.npy", (self.n_in, self.G), np.float32)
        elif not self.direct:
            p = self.dir / "expression.npy"
            self.expr, self.log1p = inplace_layout(
                p, self.n_in, self.G, self._gap, create=not p.exists()
            )
            self.files += [self.expr, self.log1p]
        elif prog.phase == 1:  # rows are counted at the end (QC), then the file is shrunk
            self.expr = self._npy("expression.npy", (self.n_in, self.G), np.float16)
            shift, scale = z_params(self.given_stats, missing_mask(plan))
        self.nonzero = self._npy("qc_nonzero.npy", (self.n_in,), np.int64)
        self.total = self._npy("qc_total.npy", (self.n_in,), np.float64)
        if prog.phase != 1:
            return
        min_nz = plan.key["parameters"]["min_nonzero"]
        want_stats = self.given_stats is None
        todo = list(range(b0 + prog.blocks_done, b1))
        self._commit("read", b1 - b0)
        bar = progress_bar(
            self.n_in, "read", self.show, int(self._rows_before(b0 + prog.blocks_done))
        )

        def read(b):
            s, a, z = (int(v) for v in plan.blocks[b])
            blk = plan.sources[s].read_block(
                np.arange(a, z), plan.alignments[s], threads=self.threads
            )
            return self._check_block(blk, s, a, z)

        last_commit = time.monotonic()
        with ThreadPoolExecutor(1) as pool:  # read block b+1 while block b is written
            fut = pool.submit(read, todo[0]) if todo else None
            for k, b in enumerate(todo):
                blk = fut.result()
                fut = pool.submit(read, todo[k + 1]) if k + 1 < len(todo) else None
                s, a, z = (int(v) for v in plan.blocks[b])
                g = int(plan.block_start[b]) - self.r0
                passed = blk.nonzero >= min_nz
                # training statistics and the NaN/inf check of every row, in one pass
                train = passed & (plan.split[self.r0 + g : self.r0 + g + (z - a)] == 0)
                bad = fold(
                    prog.stats if want_stats else None,
                    blk.values,
                    plan.alignments[s].covered,
                    train,
                )
                if bad >= 0:
                    src = plan.sources[s]
                    raise ValueError(
                        f"{src.path}: sample {src.samples.index[a + bad]!r} gives non-finite "
                        "log1p(TPM) values (NaN/inf in the input?)"
                    )
                self.nonzero.write(g, blk.nonzero)
                self.total.write(g, blk.total)
                vals = blk.values if passed.all() else blk.values[passed]
                if self.direct:  # z straight into the file's pages
                    with self.expr.rows(prog.rows_written, len(vals), write=True) as zrows:
                        # one thread: the source's reader threads are busy with the next block
                        _C.standardize_f16(
                            vals, shift[s : s + 1], scale[s : s + 1], zrows, threads=1
                        )
                else:
                    self.log1p.write(prog.rows_written, vals)
                prog.rows_written += len(vals)
                prog.blocks_done += 1
                # a commit (progress, and with durable=True an fsync of the data first) at most
                # every COMMIT_SECONDS: a kill loses at most that much reading, never consistency
                now = time.monotonic()
                if now - last_commit >= COMMIT_SECONDS or k + 1 == len(todo):
                    self._commit("read", b1 - b0)
                    last_commit = now
                if bar is not None:
                    bar.update(z - a)
        if bar is not None:
            bar.close()

    def _rows_before(self, b: int) -> int:
        b0, b1 = self.plan.shard_blocks
        return int(self.plan.block_start[b] - self.r0) if b < b1 else self.n_in

    def _check_block(self, blk: Block, s: int, a: int, z: int) -> Block:
        n, src = z - a, self.plan.sources[s]
        v = np.asarray(blk.values)
        if v.shape != (n, self.G):
            raise RuntimeError(
                f"{src.path}: read_block returned values of shape {v.shape}, expected {(n, self.G)}"
            )
        # NaN/inf are caught by fold's pass over the block
        return Block(
            v.astype(np.float32, copy=False),
            np.asarray(blk.nonzero, dtype=np.int64).reshape(n),
            np.asarray(blk.total, dtype=np.float64).reshape(n),
        )

    # -------------------------------------------------------------- tables
    def _tables(self) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
        """(samples kept, samples excluded, kept-row mask over the shard's input rows)."""
        plan = self.plan
        sl = slice(self.r0, self.r0 + self.n_in)
        nz = self.nonzero.read(0, self.n_in)
        tot = self.total.read(0, self.n_in)
        keep = nz >= plan.key["parameters"]["min_nonzero"]
        srcs = plan.sources
        df = pd.DataFrame(
            {
                "sample_id": plan.ids[sl],
                "source_index": plan.source_index[sl],
                "source": [str(srcs[i].path) for i in plan.source_index[sl]],
                "source_row": plan.source_row[sl],
            }
        )
        if plan.labels is not None:
            df["label"] = plan.labels[sl]
        df["split"] = np.asarray(SPLIT_NAMES, dtype=object)[plan.split[sl]]
        df["nonzero_genes"] = nz
        df["total_counts"] = tot
        excluded = df[~keep].drop(columns=["split"]).copy()
        excluded["reason"] = f"nonzero_genes < {plan.key['parameters']['min_nonzero']}"
        if plan.shard_blocks[0] == 0:  # (once: in the first shard)
            excluded = with_filtered(excluded, srcs)
        return df[keep].reset_index(drop=True), excluded.reset_index(drop=True), keep

    def _stats(self, n_train: int) -> CorpusStats:
        if self.given_stats is not None:
            return self.given_stats
        return CorpusStats.from_gene_stats(self.prog.stats, self.plan.reference.id, n_train)

    def finish_tables(self) -> None:
        """Write samples/excluded/splits/stats (idempotent) and move to phase 2."""
        if self.prog.phase != 1:
            return
        samples, excluded, _ = self._tables()
        n_train = int((samples["split"] == "train").sum())
        min_nz = self.plan.key["parameters"]["min_nonzero"]
        if len(samples) == 0 and self.n_in > 0:
            best = int(self.nonzero.read(0, self.n_in).max())
            raise ValueError(
                f"no sample passed QC: all {self.n_in:,} have fewer than {min_nz:,} non-zero "
                f"genes (the best has {best:,}); lower --min-nonzero / min_nonzero"
            )
        if n_train == 0 and self.given_stats is None and not self.sharded:
            raise ValueError(
                f"no training sample passed QC ({len(samples):,} kept in val/test), so no "
                "statistics can be computed: give reference statistics (--stats) or more samples"
            )
        write_corpus_tables(self.dir, samples, excluded, self._stats(n_train))
        self.manifest["rows"] = rows_summary(samples, excluded)
        self.prog.phase, self.prog.blocks_done, self.prog.rows_done = 2, 0, 0
        self._commit("standardize", len(samples))

    def run_standardize(self) -> None:
        n = self.prog.rows_written
        if self.direct:  # phase 1 wrote z already: drop the rows QC excluded
            if self.prog.rows_done < n:
                set_npy_rows(self.dir / "expression.npy", n)
                self.files.append(NpyRows(self.dir / "expression.npy"))
                self.prog.rows_done = n
                self._commit("standardize", n)
            return
        src_index = pd.read_csv(self.dir / "samples.tsv", sep="\t", usecols=["source_index"])
        standardize(
            [(self.log1p, n)],
            self.expr,
            src_index["source_index"].to_numpy(),
            CorpusStats.load(self.dir / "stats.npz"),
            missing_mask(self.plan),
            self.prog,
            self.plan.key["parameters"]["block_size"],
            lambda: self._commit("standardize", n),
            self.show,
            gap=self._gap,
        )
        set_npy_rows(self.dir / "expression.npy", n)  # after the commit of the last row
        if self.durable:
            self.expr.sync()

    def finish_corpus(self) -> None:
        mark_corpus_done(self.manifest)
        write_atomic(self.dir / "manifest.json", json_bytes(self.manifest))
        self.close()
        for name in ("log1p.npy", "qc_nonzero.npy", "qc_total.npy", "progress.npz"):
            (self.dir / name).unlink(missing_ok=True)

    def finish_part(self) -> None:
        samples, excluded, keep = self._tables()
        b0, b1 = self.plan.shard_blocks
        sizes = self.plan.blocks[b0:b1, 2] - self.plan.blocks[b0:b1, 1]
        samples["block"] = np.repeat(np.arange(b0, b1), sizes)[keep]
        write_atomic(self.dir / "samples.tsv", tsv_bytes(samples))
        write_atomic(self.dir / "excluded.tsv", tsv_bytes(excluded))
        if self.given_stats is not None:
            write_atomic(self.dir / "stats.npz", self.given_stats.to_bytes())
        self.manifest["rows"] = rows_summary(samples, excluded)
        self.manifest["progress"] = {"phase": "done"}
        self.manifest.pop("plan", None)
        self.manifest["part"] = {"rows_written": self.prog.rows_written}
        write_atomic(self.dir / "manifest.json", json_bytes(self.manifest))
        self.close()
        for name in ("qc_nonzero.npy", "qc_total.npy", "progress.npz"):
            (self.dir / name).unlink(missing_ok=True)


FILES = {
    "genes": "genes.tsv",
    "samples": "samples.tsv",
    "excluded": "excluded.tsv",
    "expression": "expression.npy",
    "missing": "missing.npy",
    "stats": "stats.npz",
    "splits": "splits.npz",
}


def with_filtered(excluded: pd.DataFrame, sources) -> pd.DataFrame:
    """``excluded`` followed by the samples each source's own filter dropped
    (:attr:`ExpressionSource.filtered`): source_row −1, no QC figures, the source's reason."""
    extra = []
    for i, src in enumerate(sources):
        f = getattr(src, "filtered", None)
        if f is None or len(f) == 0:
            continue
        e = pd.DataFrame(
            {
                "sample_id": f.index.astype(str),
                "source_index": np.int32(i),
                "source": str(src.path),
                "source_row": np.int64(-1),
            }
        )
        if "label" in excluded.columns:
            e["label"] = ""
        e["nonzero_genes"] = pd.array([pd.NA] * len(e), dtype="Int64")
        e["total_counts"] = np.nan
        e["reason"] = f["reason"].astype(str).to_numpy()
        extra.append(e)
    if not extra:
        return excluded
    excluded = excluded.astype({"nonzero_genes": "Int64"})  # integers stay integers next to NA
    return pd.concat([excluded, *extra], ignore_index=True)


def rows_summary(samples: pd.DataFrame, excluded: pd.DataFrame) -> dict:
    """The manifest's ``rows``: input (samples read), passed_qc, excluded (by QC), the size of
    each split, and filtered_by_source (samples a source's own filter dropped, source_row −1
    in excluded.tsv)."""
    counts = samples["split"].value_counts()
    filtered = int((pd.to_numeric(excluded["source_row"]) < 0).sum())
    return {
        "input": int(len(samples) + len(excluded) - filtered),
        "passed_qc": int(len(samples)),
        "excluded": int(len(excluded) - filtered),
        **{k: int(counts.get(k, 0)) for k in SPLIT_NAMES},
        "filtered_by_source": filtered,
    }


def mark_corpus_done(manifest: dict) -> None:
    """Turn the manifest of a partial build into a finished corpus' (progress, file list)."""
    manifest["progress"] = {"phase": "done"}
    manifest.pop("plan", None)
    manifest["files"] = FILES
    manifest["missing_layout"] = "per-source"


def record_finish(manifest: dict, t0: float, threads: int | None) -> None:
    """The ``build`` section's closing entries (finish time, seconds since ``t0``, threads)."""
    manifest["build"].pop("boot_id", None)
    manifest["build"].update(finished=timestamp(), seconds=round(time.time() - t0, 3))
    manifest["build"]["threads"] = threads


def write_corpus_tables(d: Path, samples, excluded, stats: CorpusStats) -> None:
    write_atomic(d / "samples.tsv", tsv_bytes(samples))
    write_atomic(d / "excluded.tsv", tsv_bytes(excluded))
    write_atomic(d / "stats.npz", stats.to_bytes())
    split = samples["split"].to_numpy()
    write_atomic(
        d / "splits.npz",
        npz_bytes(**{k: np.flatnonzero(split == k).astype(np.int64) for k in SPLIT_NAMES}),
    )


def z_params(stats: CorpusStats, missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale), each (n_sources, G) float32, of z = (v − shift[s])·scale[s]: μ and 1/σ,
    with z = 0 where σ = 0 (or is not finite) and where the gene is missing from source s."""
    good = np.isfinite(stats.std) & (stats.std > 0)
    inv = np.where(good, 1.0 / np.where(good, stats.std, 1.0), 0.0)
    mean = np.where(good, stats.mean, 0.0).astype(np.float32)
    n_src = len(missing)
    shift = np.ascontiguousarray(np.broadcast_to(mean, (n_src, len(mean))))
    scale = np.stack([np.where(~missing[s], inv, 0.0) for s in range(n_src)]).astype(np.float32)
    return shift, scale


def standardize(
    segments, expr, source_index, stats, missing, prog, block_size, commit, show, *, gap=None
):
    """Phase 2: float32 log1p rows (concatenated ``segments``) → float16 z rows of ``expr``.

    z = (v − μ)·(1/σ) in float32 (0 where σ = 0 or the gene is missing from the row's source),
    clipped to the float16 range, by the C++ kernel (bit-identical to that numpy expression).
    Both sides are memory-mapped block by block (no copies through the kernel); ``commit``
    runs at most every COMMIT_SECONDS and after the last block.

    ``gap`` (rows): the float32 rows live in the same file as ``expr``, starting ``gap``
    float16 rows after its first row (:func:`inplace_layout`), and are overwritten as the
    conversion advances. Writing rows below r + n overwrites float32 rows below (r + n − gap)/2,
    so a block is only converted once every float32 row it may overwrite is committed as done:
    after a kill, the rows still to convert are intact.
    """
    from ... import _C

    N = int(sum(n for _, n in segments))
    shift, scale = z_params(stats, missing)
    source_index = np.ascontiguousarray(source_index, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum([n for _, n in segments])]).astype(np.int64)
    bar = progress_bar(N, "standardize", show, prog.rows_done)

    def span(r: int) -> tuple[int, int, int]:
        seg = int(np.searchsorted(starts, r, side="right") - 1)
        return seg, r - int(starts[seg]), min(block_size, N - r, int(starts[seg + 1]) - r)

    last_commit = time.monotonic()
    committed = prog.rows_done
    while prog.rows_done < N:
        r = prog.rows_done
        seg, off, n = span(r)
        if gap is not None and r + n > gap + 2 * committed:
            commit()  # rows < r are done: the writes below r + n ≤ gap + 2r are safe
            committed, last_commit = r, time.monotonic()
        # straight from the page cache to the page cache: both sides memory-mapped (the
        # float16 rows written never overlap the float32 rows read, see above)
        with segments[seg][0].rows(off, n) as v, expr.rows(r, n, write=True) as z:
            _C.standardize_f16(v, shift, scale, z, source_index[r : r + n])
        prog.rows_done += n
        prog.blocks_done += 1
        now = time.monotonic()
        if now - last_commit >= COMMIT_SECONDS or prog.rows_done == N:
            commit()
            committed, last_commit = prog.rows_done, now
        if bar is not None:
            bar.update(n)
    if bar is not None:
        bar.close()


def inplace_layout(path: Path, n_rows: int, G: int, gap: int, *, create: bool):
    """The single file of a whole build: an ``.npy`` header for (n_rows, G) float16, then
    ``gap`` float16 rows of room, then the float32 log1p rows of phase 1. Phase 2 writes the
    float16 rows from the header on, over pages phase 1 already filled (no second file, no
    fresh memory for it), and finally the file is cut to the float16 rows
    (:func:`set_npy_rows`). Returns (float16 rows, float32 rows)."""
    if create:
        # float16 rows as the header says, then room for the rest: gap + 2 bytes per value
        tail = 2 * G * gap + 2 * G * n_rows
        expr = NpyRows(path, (n_rows, G), np.float16, create=True, tail_bytes=tail)
    else:
        expr = NpyRows(path)
    log1p = NpyRows(path, (n_rows, G), np.float32, offset=expr.offset + 2 * G * gap)
    return expr, log1p
