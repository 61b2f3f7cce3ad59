"""Sample (and gene-level) embeddings from a pretrained BulkFormer, scanpy-style.

::

    data (numpy N × J + gene_ids | AnnData | Corpus)
      → an ExpressionSource (bulkformer.data.array.ArraySource; AnnData through
        bulkformer.data.h5ad.anndata_source): checked (negative, non-finite, non-integer
        counts, TPM > 1e6, log1p TPM > ln(1e6 + 1) refused), aligned to the checkpoint's gene
        reference by Ensembl ID (by symbol when no ID matches; refused below min_gene_overlap)
      → counts → TPM → log1p (or TPM / log1p TPM as given) by the C++ engine, as in a corpus
      → z-score with the checkpoint's CorpusStats by the corpus' standardize routine
        (σ = 0 or uncovered → 0, flagged missing); z given: checked, |z| ≤ 65504
      → BulkFormer in batches (GPU when present) → pool over observed genes → (N, D)

Numpy in gives numpy out; an AnnData gets ``obsm[key_added]`` and ``uns["bulkformer"]`` and
nothing else (``copy=True`` returns a modified copy instead). A :class:`Corpus` is already
z-scored with its own statistics, so it must use the checkpoint's gene reference.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .._device import resolve_device
from ..data.array import ArraySource
from ..data.corpus import Corpus
from ..data.genes import ReferenceMismatchError
from ..data.h5ad import anndata_matrix, anndata_source
from ..data.matrix import VALUE_KINDS, align_matrix
from ..data.normalize import standardize, z_params
from ..data.source import ExpressionSource, align_genes

__all__ = [
    "embed",
    "prepare_input",
    "PreparedInput",
    "resolve_pretrained",
    "INPUT_VALUE_KINDS",
    "LOW_COVERAGE",
    "MIN_GENE_OVERLAP",
    "MAX_ABS_Z",
]

log = logging.getLogger(__name__)

#: what the numbers of a matrix input to a checkpoint are: the corpus value kinds, or "z" =
#: z-scores already in the checkpoint's scale
INPUT_VALUE_KINDS = (*VALUE_KINDS, "z")
#: below this fraction of reference genes matched, :func:`prepare_input` warns
LOW_COVERAGE = 0.5
#: default floor of the fraction of the checkpoint's reference genes a matrix input must cover
#: (``min_gene_overlap=``, ``--min-gene-overlap``); below it — or with no gene at all — the
#: input is refused
MIN_GENE_OVERLAP = 0.5
#: largest |z| accepted with ``values="z"`` (the float16 range the corpus stores z-scores in)
MAX_ABS_Z = 65504.0
#: gene-level embeddings larger than this raise instead of filling memory
MAX_GENE_LEVEL_BYTES = 8 << 30


def resolve_pretrained(pretrained, *, map_location="cpu"):
    """A :class:`~bulkformer.model.pretrained.Pretrained` as is, or loaded from a directory."""
    from ..model.pretrained import Pretrained, load_pretrained

    if isinstance(pretrained, Pretrained):
        return pretrained
    if isinstance(pretrained, (str, os.PathLike)):
        return load_pretrained(pretrained, map_location=map_location)
    raise TypeError(
        f"pretrained must be a Pretrained (load_pretrained) or a directory, got {type(pretrained)}"
    )


@dataclass
class PreparedInput:
    """An input aligned to a checkpoint's gene reference, standardized batch by batch.

    ``rows(idx)`` gives (b, G) float32 z-scores and ``missing(idx)`` the (b, G) bool mask of
    genes the model must not see (absent from the input, or without statistics).
    """

    n_obs: int
    obs: pd.DataFrame  # (N rows) sample metadata; index = sample ids
    coverage: float  # fraction of reference genes the input covers
    n_matched: int  # reference genes covered
    kind: str  # "numpy" | "anndata" | "corpus" | "source"
    _rows: object = field(repr=False, default=None)
    _missing: object = field(repr=False, default=None)

    def rows(self, idx) -> np.ndarray:
        """(b, G) float32 z-scores of rows ``idx`` (a slice or int array)."""
        return self._rows(idx)

    def missing(self, idx) -> np.ndarray:
        """(b, G) bool: genes hidden from the model in rows ``idx``."""
        return self._missing(idx)

    def z(self, idx=None) -> np.ndarray:
        """(n, G) float32 z-scores of ``idx`` (default: all rows; memory n × G × 4 bytes)."""
        return self.rows(slice(None) if idx is None else idx)


def _check_overlap(where: str, gene_ids, al, n_ref: int, floor: float) -> None:
    """Refuse an input that covers no, or too few (< ``floor``), reference genes."""
    n = al.n_matched
    if n > 0 and n >= floor * n_ref:
        if n < LOW_COVERAGE * n_ref:
            log.warning(
                "%s: only %d of %d genes of the checkpoint's reference (%.0f%%) are in the "
                "input; embeddings of inputs with low coverage are less reliable",
                where,
                n,
                n_ref,
                100 * n / n_ref,
            )
        return
    unmatched = np.asarray(gene_ids, dtype=object)[np.asarray(al.gene_map) < 0]
    examples = ", ".join(repr(str(g)) for g in unmatched[:5]) or "none"
    raise ValueError(
        f"{where}: only {n:,} of {n_ref:,} genes of the checkpoint's reference "
        f"({100 * n / max(n_ref, 1):.1f}%) are in the input, below min_gene_overlap={floor:g}; "
        f"{len(unmatched):,} of {len(al.gene_map):,} input genes match no reference gene ID or "
        f"symbol, e.g. {examples} (gene IDs must be Ensembl IDs or symbols of the reference; "
        "pick the gene column with gene_column= / --gene-column, or lower min_gene_overlap)"
    )


def _check_z(block: np.ndarray, where: str) -> None:
    """Refuse z-scores the model cannot have seen: NaN/inf, or |z| beyond the float16 range
    the corpus stores."""
    block = np.asarray(block)
    bad = ~np.isfinite(block) | (np.abs(block) > MAX_ABS_Z)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(
            f"{where}: {int(bad.sum())} z-score(s) non-finite or beyond ±{MAX_ABS_Z:g}, first "
            f"{block[r, c]!r} at row {r}, gene column {c}: expected z-scores standardized with "
            "the checkpoint's statistics (or pass counts / TPM with values=)"
        )


def _z_input(x, gene_ids, pretrained, obs, kind, where, floor) -> PreparedInput:
    """Input already z-scored in the checkpoint's scale: aligned (as log1p TPM would be) and
    checked, not normalized."""
    ref, st = pretrained.reference, pretrained.stats
    al = align_matrix(gene_ids, ref, "log1p_tpm", where=where)
    _check_overlap(where, gene_ids, al, len(ref), floor)
    keep = al.gene_map >= 0
    if len(np.unique(al.gene_map[keep])) != int(keep.sum()):
        raise ValueError(f"{where}: duplicate gene IDs in z-scored input")
    good = np.isfinite(st.std) & (st.std > 0)
    hidden = ~(al.covered & good)
    sparse = hasattr(x, "tocsr") and not isinstance(x, np.ndarray)
    if sparse:
        x = x.tocsr()

    def rows(idx):
        block = x[_positions(x.shape[0], idx)]
        block = block.toarray() if sparse else np.asarray(block)
        _check_z(block, where)
        out = np.zeros((len(block), len(ref)), dtype=np.float32)
        out[:, al.gene_map[keep]] = block[:, keep]
        out[:, hidden] = 0.0
        return out

    return PreparedInput(
        x.shape[0],
        obs,
        al.n_matched / len(ref),
        al.n_matched,
        kind,
        rows,
        _hidden(hidden, x.shape[0]),
    )


def _positions(n: int, idx) -> np.ndarray:
    """(b,) int64 row positions of ``idx`` (a slice, an int or an int array) among n rows."""
    if isinstance(idx, slice):
        return np.arange(*idx.indices(n), dtype=np.int64)
    return np.atleast_1d(np.asarray(idx, dtype=np.int64))


def _hidden(hidden: np.ndarray, n_obs: int):
    """missing(idx): the (G,) mask of genes hidden from the model, for every row of ``idx``."""

    def missing(idx):
        n = len(_positions(n_obs, idx))
        return np.broadcast_to(hidden, (n, len(hidden))).copy()

    return missing


def _source_input(src: ExpressionSource, pretrained, kind, floor) -> PreparedInput:
    """A source → z-scores in the checkpoint's scale, block by block: the source's own
    normalization (the C++ engine) and the one standardize routine of the corpus."""
    ref, st = pretrained.reference, pretrained.stats
    fn = getattr(src, "align", None)
    al = fn(ref) if callable(fn) else align_genes(src.gene_ids, ref)
    _check_overlap(src.path, src.gene_ids, al, len(ref), floor)
    shift, scale = z_params(st.mean, st.std, ~al.covered)
    good = np.isfinite(st.std) & (st.std > 0)
    hidden = ~(al.covered & good)

    def rows(idx):
        v = src.read_block(_positions(src.n_samples, idx), al).values
        return standardize(v, shift, scale, dtype=np.float32)

    return PreparedInput(
        src.n_samples,
        src.samples,
        al.n_matched / len(ref),
        al.n_matched,
        kind,
        rows,
        _hidden(hidden, src.n_samples),
    )


def _matrix_input(x, gene_ids, pretrained, values, obs, kind, where, floor) -> PreparedInput:
    if values not in INPUT_VALUE_KINDS:
        raise ValueError(f"values={values!r}: expected one of {', '.join(INPUT_VALUE_KINDS)}")
    if gene_ids is None:
        raise ValueError(f"{where}: gene_ids= are needed to align a matrix to the gene reference")
    if values == "z":
        gene_ids = np.asarray(gene_ids, dtype=object)
        if x.ndim != 2 or x.shape[1] != len(gene_ids):
            raise ValueError(
                f"{where}: matrix has shape {x.shape} but {len(gene_ids)} gene IDs were given — "
                "expected samples × genes"
            )
        return _z_input(x, gene_ids, pretrained, obs, kind, where, floor)
    src = ArraySource(x, gene_ids, obs, values=values, path=where)
    return _source_input(src, pretrained, kind, floor)


def _anndata_input(adata, pretrained, values, layer, gene_column, floor) -> PreparedInput:
    if values not in INPUT_VALUE_KINDS:
        raise ValueError(f"values={values!r}: expected one of {', '.join(INPUT_VALUE_KINDS)}")
    if values == "z":
        x, genes, obs, where = anndata_matrix(adata, layer=layer, gene_column=gene_column)
        return _z_input(x, genes, pretrained, obs, "anndata", where, floor)
    src = anndata_source(adata, layer=layer, gene_column=gene_column, values=values)
    return _source_input(src, pretrained, "anndata", floor)


def _corpus_input(corpus: Corpus, pretrained) -> PreparedInput:
    ref, st = pretrained.reference, pretrained.stats
    rid = corpus.manifest["reference"]["id"]
    if rid != ref.id:
        raise ReferenceMismatchError(
            f"corpus {corpus.path} uses gene reference {rid} ({corpus.n_genes} genes) but the "
            f"checkpoint uses {ref.id} ({len(ref)} genes): rebuild the corpus with the "
            "checkpoint's reference and statistics (bulkformer preprocess --reference "
            "CKPT/genes.tsv --stats CKPT/stats.npz)"
        )
    cst = corpus.stats
    if not (np.allclose(cst.mean, st.mean) and np.allclose(cst.std, st.std)):
        log.warning(
            "corpus %s was standardized with other statistics than the checkpoint's; "
            "rebuild it with --stats CKPT/stats.npz to match the model's scale",
            corpus.path,
        )
    expr = corpus.expression
    bad_stats = ~(np.isfinite(st.std) & (st.std > 0))
    covered = ~corpus.missing.all(axis=0)
    n_matched = int(covered.sum())
    obs = corpus.samples.set_index("sample_id", drop=False)
    obs.index = obs.index.astype(str)

    def rows(idx):
        return np.asarray(expr[idx], dtype=np.float32)

    def missing(idx):
        all_rows = np.arange(len(corpus))[idx]
        return corpus.missing_rows(all_rows) | bad_stats

    return PreparedInput(len(corpus), obs, n_matched / len(ref), n_matched, "corpus", rows, missing)


def prepare_input(
    data,
    pretrained,
    *,
    values: str = "counts",
    gene_ids=None,
    layer: str | None = None,
    gene_column: str | None = None,
    min_gene_overlap: float = MIN_GENE_OVERLAP,
) -> PreparedInput:
    """Align and standardize ``data`` for a checkpoint (lazily, row block by row block).

    Parameters
    ----------
    data : (N, J) numpy array (with ``gene_ids``), AnnData (samples × genes), an
        :class:`~bulkformer.data.source.ExpressionSource` (ARCHS4, GDC, ``.h5ad`` file, array;
        its own ``values``), a :class:`Corpus` or a corpus directory.
    pretrained : :class:`~bulkformer.model.pretrained.Pretrained`.
    values, gene_ids, layer, gene_column, min_gene_overlap : see :func:`embed`.

    Raises
    ------
    ValueError
        Unknown ``values``, no gene IDs, a layer or var column that does not exist, bad numbers,
        too few reference genes in the input.
    ReferenceMismatchError
        A corpus built for another gene reference than the checkpoint's.
    """
    if isinstance(data, (str, os.PathLike)) and Path(data).is_dir():
        data = Corpus.open(data)
    if isinstance(data, Corpus):
        return _corpus_input(data, pretrained)
    if not 0 <= min_gene_overlap <= 1:
        raise ValueError(f"min_gene_overlap={min_gene_overlap!r}: expected a fraction in [0, 1]")
    if isinstance(data, ExpressionSource):  # ARCHS4Source, GDCSource, H5ADSource, ArraySource
        return _source_input(data, pretrained, "source", min_gene_overlap)
    if _is_anndata(data):
        return _anndata_input(data, pretrained, values, layer, gene_column, min_gene_overlap)
    if isinstance(data, np.ndarray) or hasattr(data, "tocsr"):
        n = data.shape[0]
        obs = pd.DataFrame(index=pd.Index([str(i) for i in range(n)]))
        return _matrix_input(
            data, gene_ids, pretrained, values, obs, "numpy", "input matrix", min_gene_overlap
        )
    raise TypeError(
        "embed: data must be a numpy array, AnnData, ExpressionSource or Corpus (or its "
        f"directory), got {type(data)}"
    )


def _is_anndata(x) -> bool:
    try:
        import anndata as ad
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, ad.AnnData)


def _check_batch_size(batch_size) -> None:
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or (batch_size < 1)
    ):
        raise ValueError(f"batch_size={batch_size!r}: expected a whole number of samples ≥ 1")


def run_model(
    prep: PreparedInput,
    model,
    *,
    how: str | None = None,
    batch_size: int = 16,
    device=None,
    gene_level: bool = False,
    progress: bool = True,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Forward ``prep`` through ``model`` in eval mode, no gradients, batch by batch.

    ``how``: ``"sample"`` | ``"mean"`` | ``"max"`` (:meth:`BulkFormerOutput.pool`); ``None``:
    the model's ``config.pooling``.

    Returns
    -------
    (n, D) float32 pooled embeddings and, with ``gene_level``, (n, G, D) float32 hidden states
    (else ``None``); ``n`` = len(rows) or all rows.
    """
    import torch
    from tqdm.auto import tqdm

    _check_batch_size(batch_size)
    dev = resolve_device(device)
    idx = np.arange(prep.n_obs) if rows is None else np.asarray(rows, dtype=np.int64)
    cfg = model.config
    n, G, D = len(idx), cfg.n_genes, cfg.d_model
    if gene_level and n * G * D * 4 > MAX_GENE_LEVEL_BYTES:
        raise ValueError(
            f"gene-level embeddings of {n:,} samples × {G:,} genes × {D} would take "
            f"{n * G * D * 4 / 2**30:.1f} GiB (limit {MAX_GENE_LEVEL_BYTES / 2**30:.0f} GiB): "
            "embed fewer samples at a time"
        )
    model = model.to(dev)
    was_training = model.training
    model.eval()
    out = np.empty((n, D), dtype=np.float32)
    genes = np.empty((n, G, D), dtype=np.float32) if gene_level else None
    bar = tqdm(total=n, desc="embed", unit="sample", disable=not progress)
    try:
        with torch.no_grad():
            for a in range(0, n, batch_size):
                sel = idx[a : a + batch_size]
                x = torch.from_numpy(prep.rows(sel)).to(dev)
                miss = torch.from_numpy(prep.missing(sel)).to(dev)
                res = model(x, missing=miss)
                out[a : a + len(sel)] = res.pool(how).float().cpu().numpy()
                if gene_level:
                    genes[a : a + len(sel)] = res.hidden.float().cpu().numpy()
                bar.update(len(sel))
    finally:
        bar.close()
        model.train(was_training)
    return out, genes


def embed(
    data,
    pretrained,
    *,
    values: str = "counts",
    gene_ids=None,
    layer: str | None = None,
    gene_column: str | None = None,
    min_gene_overlap: float = MIN_GENE_OVERLAP,
    how: str | None = None,
    batch_size: int = 16,
    device=None,
    key_added: str = "X_bulkformer",
    gene_level: bool = False,
    copy: bool = False,
    progress: bool = True,
):
    """Embed bulk RNA-seq samples with a pretrained BulkFormer.

    Parameters
    ----------
    data : (N, J) numpy array or scipy sparse matrix, AnnData (N samples × J genes), an
        :class:`~bulkformer.data.source.ExpressionSource` (e.g.
        :class:`~bulkformer.data.h5ad.H5ADSource`, read block by block; ``values`` is the
        source's own), :class:`~bulkformer.data.corpus.Corpus` or a corpus directory.
    pretrained : :class:`~bulkformer.model.pretrained.Pretrained` or its directory.
    values : what the matrix holds: ``"counts"`` (raw → TPM with gene lengths → log1p),
        ``"tpm"``, ``"log1p_tpm"``, or ``"z"`` (already z-scored with the checkpoint's
        statistics). Ignored for a corpus (always z-scores).
    gene_ids : (J,) Ensembl gene IDs of the numpy columns (required for numpy input); gene
        symbols of the reference are matched when no ID matches.
    layer : AnnData: read ``layers[layer]`` instead of ``X``.
    gene_column : AnnData: ``var`` column with Ensembl IDs (default ``var_names``).
    min_gene_overlap : refuse (ValueError naming the input, the number matched and examples of
        unmatched IDs) a matrix input covering fewer than this fraction of the checkpoint's
        reference genes, or none (default :data:`MIN_GENE_OVERLAP` = 0.5; 0 accepts any
        non-empty overlap). Numbers are checked too: negative or non-finite values,
        non-integer counts, TPM above 1e6, log1p TPM above ln(1e6 + 1) and |z| above 65504
        are refused.
    how : the sample embedding: ``"sample"`` (the model's sample vector, trained by the
        sample-bottleneck objective), or ``"mean"`` / ``"max"`` pooling of the gene embeddings
        over observed genes. ``None``: the checkpoint's ``config.pooling`` (``"sample"`` for
        models trained with the sample objective, ``"mean"`` for older ones).
    batch_size : samples per forward pass (≥ 1).
    device : torch device; default CUDA when available, else CPU. The model is moved there.
    key_added : AnnData: ``obsm`` key of the (N, D) embeddings; gene-level ones go to
        ``obsm[key_added + "_genes"]``.
    gene_level : also return the (N, G, D) final hidden states (refused above 8 GiB).
    copy : AnnData: return a modified copy instead of writing into ``data``.
    progress : tqdm progress bar.

    Returns
    -------
    numpy / source / Corpus input: (N, D) float32 array, or ``(emb (N, D), genes (N, G, D))`` with
    ``gene_level``. AnnData: ``None`` (``data`` modified: ``obsm[key_added]``,
    ``uns["bulkformer"]``), or the modified copy when ``copy=True``.

    Sets (AnnData)
    --------------
    ``obsm[key_added]`` (N, D) float32; ``obsm[key_added + "_genes"]`` (N, G, D) with
    ``gene_level``; ``uns["bulkformer"]``: ``model`` (path), ``reference_id``, ``coverage``,
    ``n_genes_matched``, ``pooling``, ``values``, ``key_added`` (other keys already there are
    kept).
    """
    _check_batch_size(batch_size)
    pre = resolve_pretrained(pretrained)
    how = how or pre.model.config.pooling
    prep = prepare_input(
        data,
        pre,
        values=values,
        gene_ids=gene_ids,
        layer=layer,
        gene_column=gene_column,
        min_gene_overlap=min_gene_overlap,
    )
    emb, genes = run_model(
        prep,
        pre.model,
        how=how,
        batch_size=batch_size,
        device=device,
        gene_level=gene_level,
        progress=progress,
    )
    log.info(
        "embedded %d samples → %d dims (coverage %.1f%%, %s pooling)",
        prep.n_obs,
        emb.shape[1],
        100 * prep.coverage,
        how,
    )
    if prep.kind != "anndata":
        return (emb, genes) if gene_level else emb
    adata = data.copy() if copy else data
    adata.obsm[key_added] = emb
    if gene_level:
        adata.obsm[key_added + "_genes"] = genes
    info = dict(adata.uns.get("bulkformer", {}))
    info.update(
        model=str(pre.path),
        reference_id=pre.reference.id,
        coverage=float(prep.coverage),
        n_genes_matched=int(prep.n_matched),
        pooling=how,
        values=values,
        key_added=key_added,
    )
    adata.uns["bulkformer"] = info
    return adata if copy else None
