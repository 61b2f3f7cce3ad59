"""The training corpus on disk: build it from expression sources, open it, merge shards.

A corpus is one directory (format: ``docs/corpus_format.md``), readable with numpy + pandas:

``manifest.json``   format version, parameters, sources (size + checksum), reference id, row
                    counts, progress
``genes.tsv``       the gene reference (G genes, column order of every matrix)
``samples.tsv``     one row per sample kept: sample_id, source_index, source, source_row,
                    [label], split, nonzero_genes, total_counts
``excluded.tsv``    samples dropped by QC, with their figures, and those a source's own filter
                    dropped (ARCHS4 single-cell probability; ``source_row`` −1), with the reason
``expression.npy``  (N, G) float16 z-scores (``np.load(..., mmap_mode="r")``)
``missing.npy``     (n_sources, G) bool: reference genes a source lacks (z = 0 there); the row
                    of sample i is ``missing[samples.source_index[i]]``
``stats.npz``       per-gene ``mean``, ``std`` (population) and ``count`` of log1p(TPM) over the
                    training rows (or copied from a reference corpus), ``reference_id``, ``n``
``splits.npz``      ``train``, ``val``, ``test``: int64 row indices into expression.npy

Building (:func:`build_corpus`) inflates every source once: phase 1 reads row blocks of
``log1p(TPM)`` into float32 rows while accumulating per-gene statistics over the training rows
that pass QC; phase 2 standardizes them into float16 z-scores, in place (the float32 rows sit
in ``expression.npy`` itself, behind room for one block, and are overwritten as the conversion
advances; see :func:`.build.standardize`). With given statistics, z is written while reading and
phase 2 only drops the rows QC excluded. The build runs in ``OUT.partial`` and is renamed to
``OUT`` at the end; after a kill, rerunning the same call resumes from the last committed block
and gives byte-identical files (the manifest's ``build`` section, which holds timings, aside).

Shards (``shard=(i, n)``) each run phase 1 over a contiguous range of blocks and keep the raw
float32 ``log1p.npy``; :func:`merge_parts` re-folds the training statistics block by block in
the same order as a single run (bit-identical), then standardizes.

Modules: :mod:`.reader` (:class:`Corpus`, :class:`CorpusPart`), :mod:`.stats`
(:class:`CorpusStats`, fingerprints), :mod:`.plan` (splits, alignment, row blocks),
:mod:`.build` (the two-phase writer, in-place standardization, :func:`build_corpus`),
:mod:`.merge` (:func:`merge_parts`), :mod:`.progress` (the commit record of a partial build,
resumability), :mod:`.guard` (output safety: the writer's lock, what ``overwrite`` may replace)
and the private ``_npy`` (row I/O of ``.npy`` files; the byte encodings are in
:mod:`bulkformer._io`).

Only one process writes an output at a time (a second one fails at once, naming the first),
and ``overwrite`` replaces only a bulkformer corpus that is none of the inputs.
"""

from .build import PARTIAL_LAYOUT, build_corpus
from .merge import merge_parts
from .plan import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_MIN_NONZERO,
    DEFAULT_SPLITS,
    SPLIT_NAMES,
    assign_splits,
)
from .reader import FORMAT, FORMAT_VERSION, Corpus, CorpusPart
from .stats import CorpusStats, file_fingerprint

__all__ = [
    "Corpus",
    "CorpusPart",
    "CorpusStats",
    "assign_splits",
    "build_corpus",
    "merge_parts",
    "file_fingerprint",
    "FORMAT",
    "FORMAT_VERSION",
    "SPLIT_NAMES",
    "DEFAULT_SPLITS",
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_MIN_NONZERO",
    "PARTIAL_LAYOUT",
]
