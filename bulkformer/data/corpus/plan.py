"""The plan of a build: everything decided before any expression is read (sources and their
gene alignments, sample ids, the train/val/test split, the row blocks and a shard's share)."""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..genes import GeneReference
from ..source import Alignment, ExpressionSource, align_genes
from .stats import source_fingerprint, stats_sha

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
DEFAULT_SPLITS = (0.9, 0.05, 0.05)
DEFAULT_BLOCK_SIZE = 512
#: QC: a sample needs at least this many non-zero genes (the ARCHS4 bulk threshold); the one
#: default of ``build_corpus``, ``preprocess --min-nonzero``, ``ARCHS4File.filter`` and ``archs4 qc``
DEFAULT_MIN_NONZERO = 14_000


# ====================================================================== splits
def assign_splits(
    n: int,
    fractions: Sequence[float] = DEFAULT_SPLITS,
    *,
    seed: int = 0,
    labels: Sequence | None = None,
) -> np.ndarray:
    """Seeded (stratified when ``labels`` are given) train/val/test assignment.

    Returns
    -------
    (n,) int8: 0 = train, 1 = val, 2 = test.

    Within each label class (classes in sorted order; missing labels form their own class) the
    members are shuffled with ``np.random.default_rng(seed)`` and the first
    ``m − round(m·f_val) − round(m·f_test)`` go to train, the next ``round(m·f_val)`` to val,
    the rest to test (round half up). Train always keeps at least one member, so a class too
    small for a val/test share stays entirely in train (logged).
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or fr.sum() <= 0:
        raise ValueError(
            f"splits must be three non-negative fractions (train, val, test), got {fr}"
        )
    fr = fr / fr.sum()
    rng = np.random.default_rng(seed)
    codes = np.zeros(n, dtype=np.int8)
    if labels is None:
        groups = [("", np.arange(n))]
    else:
        lab = pd.Series(labels, dtype=object).fillna("").astype(str).to_numpy()
        if len(lab) != n:
            raise ValueError(f"{len(lab)} labels for {n} samples")
        order = np.argsort(lab, kind="stable")
        uniq, start = np.unique(lab[order], return_index=True)
        bounds = list(start) + [n]
        groups = [(u, order[bounds[i] : bounds[i + 1]]) for i, u in enumerate(uniq)]
    small = []
    for name, idx in groups:
        m = len(idx)
        perm = rng.permutation(idx)
        n_val = int(np.floor(m * fr[1] + 0.5))
        n_test = int(np.floor(m * fr[2] + 0.5))
        while n_val + n_test > m - 1 and n_val + n_test > 0 and fr[0] > 0:
            if n_test >= n_val and n_test > 0:
                n_test -= 1
            else:
                n_val -= 1
        n_train = m - n_val - n_test
        codes[perm[n_train : n_train + n_val]] = 1
        codes[perm[n_train + n_val :]] = 2
        if labels is not None and (fr[1] > 0 and n_val == 0 or fr[2] > 0 and n_test == 0):
            small.append(f"{name or '<none>'} ({m})")
    if small:
        log.info(
            "%d label class(es) too small for a val/test share stay mostly in train: %s",
            len(small),
            ", ".join(small[:10]) + (" …" if len(small) > 10 else ""),
        )
    return codes


# ====================================================================== the plan
@dataclasses.dataclass
class Plan:
    """Everything decided before any expression is read (cheap; validates the inputs)."""

    sources: list
    alignments: list
    reference: GeneReference
    ids: np.ndarray  # (N,) sample ids, all sources
    source_index: np.ndarray  # (N,) int32
    source_row: np.ndarray  # (N,) int64
    labels: np.ndarray | None  # (N,) str
    split: np.ndarray  # (N,) int8
    blocks: np.ndarray  # (B, 3) int64: source, start, stop (rows within the source)
    block_start: np.ndarray  # (B,) global input row of each block's first row
    shard_blocks: tuple  # [b0, b1)
    key: dict  # parameters + inputs identity (resume / merge compatibility)

    @property
    def shard_rows(self) -> tuple:
        b0, b1 = self.shard_blocks
        if b0 == b1:
            return (0, 0)
        last = self.blocks[b1 - 1]
        return int(self.block_start[b0]), int(self.block_start[b1 - 1] + last[2] - last[1])


def align_source(source: ExpressionSource, reference: GeneReference) -> Alignment:
    fn = getattr(source, "align", None)
    al = fn(reference) if callable(fn) else align_genes(source.gene_ids, reference)
    if al.reference_id != reference.id:
        reference.check_same(al.reference_id, f"the gene alignment of {source.path}")
    if al.n_matched == 0:
        ids = list(np.asarray(source.gene_ids)[:3])
        raise ValueError(
            f"{source.path}: none of its {len(source.gene_ids):,} gene IDs (e.g. {ids}) matches "
            f"the gene reference ({len(reference):,} genes such as {reference.gene_ids[0]}) — "
            "unknown gene ID scheme? Expected Ensembl gene IDs (ENSG…); pick the right column "
            "(gene_column= / --gene-column)"
        )
    if al.n_matched < 0.5 * len(reference):
        log.warning("%s: only %s", source.path, al.report())
    return al


def parse_shard(spec) -> tuple | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        try:
            i, n = (int(v) for v in spec.split("/"))
        except ValueError:
            raise ValueError(f"shard {spec!r} is not of the form i/n (e.g. 0/4)") from None
    else:
        i, n = (int(v) for v in spec)
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard {i}/{n}: need 0 ≤ i < n")
    return i, n


def block_cuts(source: ExpressionSource, block_size: int) -> np.ndarray:
    """The source's block boundaries (chunk-aligned where it knows its storage), checked."""
    n = source.n_samples
    fn = getattr(source, "block_cuts", None)
    cuts = np.asarray(
        fn(block_size) if fn is not None else ExpressionSource.block_cuts(source, block_size),
        dtype=np.int64,
    )
    if (
        len(cuts) == 0
        or cuts[0] != 0
        or cuts[-1] != n
        or (len(cuts) > 1 and (np.diff(cuts) <= 0).any())
    ):
        raise RuntimeError(
            f"{source.path}: block_cuts() must rise strictly from 0 to {n}; got {cuts[:8]}…"
        )
    return cuts


def make_plan(
    sources, reference, *, label, min_nonzero, splits, seed, stats, block_size, shard
) -> Plan:
    if isinstance(sources, ExpressionSource):
        sources = [sources]
    sources = list(sources)
    if not sources:
        raise ValueError("no input: give at least one expression source")
    if block_size < 1:
        raise ValueError(f"block_size must be ≥ 1, got {block_size}")
    alignments = [align_source(s, reference) for s in sources]
    ids, sidx, srow, labels = [], [], [], []
    for i, s in enumerate(sources):
        df = s.samples
        if label is not None and label not in df.columns:
            raise ValueError(
                f"{s.path}: no sample column {label!r} for labels; available: "
                f"{', '.join(map(str, df.columns)) or '(none)'}"
            )
        ids.append(df.index.astype(str).to_numpy(dtype=object))
        sidx.append(np.full(len(df), i, dtype=np.int32))
        srow.append(np.arange(len(df), dtype=np.int64))
        if label is not None:
            labels.append(df[label].to_numpy(dtype=object))
    all_ids = np.concatenate(ids) if ids else np.array([], dtype=object)
    dup = pd.Index(all_ids).duplicated()
    if dup.any():
        d = all_ids[dup][:5].tolist()
        where = [sources[int(i)].path for i in np.concatenate(sidx)[dup][:2]]
        raise ValueError(
            f"{int(dup.sum())} duplicate sample ID(s) across the inputs, e.g. {d} (in {where}); "
            "sample IDs must be unique in a corpus — drop the repeated samples from one input"
        )
    lab = None
    if label is not None:
        lab = pd.Series(np.concatenate(labels), dtype=object).fillna("").astype(str).to_numpy()
    split = assign_splits(len(all_ids), splits, seed=seed, labels=lab)
    blocks = [
        (i, int(a), int(b))
        for i, s in enumerate(sources)
        for a, b in itertools.pairwise(block_cuts(s, block_size))
    ]
    blocks = np.array(blocks, dtype=np.int64).reshape(-1, 3)
    offsets = np.concatenate([[0], np.cumsum([s.n_samples for s in sources])])
    block_start = offsets[blocks[:, 0]] + blocks[:, 1] if len(blocks) else np.zeros(0, np.int64)
    sh = parse_shard(shard)
    if sh is None:
        shard_blocks = (0, len(blocks))
    else:
        i, n = sh
        N = max(len(all_ids), 1)
        owner = np.minimum(block_start * n // N, n - 1)
        hit = np.flatnonzero(owner == i)
        shard_blocks = (int(hit[0]), int(hit[-1]) + 1) if len(hit) else (0, 0)
    fr = np.asarray(splits, dtype=np.float64)
    params = {
        "label": label,
        "min_nonzero": int(min_nonzero),
        "splits": dict(zip(SPLIT_NAMES, (fr / fr.sum()).round(12).tolist())),
        "seed": int(seed),
        "block_size": int(block_size),
        "stats": None
        if stats is None
        else {"reference_id": stats.reference_id, "n": stats.n, "sha256": stats_sha(stats)},
    }
    src_info = []
    for i, (s, al) in enumerate(zip(sources, alignments)):
        src_info.append(
            {
                "index": i,
                "type": type(s).__name__,
                "path": str(s.path),
                "n_samples": int(s.n_samples),
                "fingerprint": source_fingerprint(s),
                "alignment": {
                    "n_matched": al.n_matched,
                    "n_unused": al.n_unused,
                    "n_duplicates": al.n_duplicates,
                    "n_unknown_length": al.n_unknown_length,
                    "report": al.report(),
                },
            }
        )
    key = {
        "reference": {"id": reference.id, "n_genes": len(reference)},
        "parameters": params,
        "sources": src_info,
    }
    return Plan(
        sources,
        alignments,
        reference,
        all_ids,
        np.concatenate(sidx) if sidx else np.zeros(0, np.int32),
        np.concatenate(srow) if srow else np.zeros(0, np.int64),
        lab,
        split,
        blocks,
        block_start.astype(np.int64),
        shard_blocks,
        key,
    )


def missing_mask(plan: Plan) -> np.ndarray:
    return np.stack([~al.covered for al in plan.alignments]).astype(bool)
