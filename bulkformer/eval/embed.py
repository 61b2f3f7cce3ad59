"""Sample (and gene-level) embeddings from a pretrained BulkFormer, scanpy-style.

::

    data (numpy N × J + gene_ids | AnnData | Corpus)
      → align to the checkpoint's gene reference (align_genes; coverage warning)
      → counts → TPM → log1p (or TPM / log1p TPM / z as given)
      → z-score with the checkpoint's statistics (σ = 0 or uncovered → 0, flagged missing)
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
from ..data.corpus import Corpus
from ..data.genes import ReferenceMismatchError
from ..data.memory import align_values, check_values, to_log1p_tpm
from ..data.normalize import zscore_ref

__all__ = [
    "embed",
    "prepare_input",
    "PreparedInput",
    "resolve_pretrained",
    "VALUES",
    "LOW_COVERAGE",
]

log = logging.getLogger(__name__)

#: what the numbers of a matrix input are; "z" = z-scores already in the checkpoint's scale
VALUES = ("counts", "tpm", "log1p_tpm", "z")
#: below this fraction of reference genes matched, :func:`prepare_input` warns
LOW_COVERAGE = 0.5
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
    kind: str  # "numpy" | "anndata" | "corpus"
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


def _matrix_input(x, gene_ids, pretrained, values, obs, kind, where) -> PreparedInput:
    ref, st = pretrained.reference, pretrained.stats
    if values not in VALUES:
        raise ValueError(f"values={values!r}: expected one of {', '.join(VALUES)}")
    if gene_ids is None:
        raise ValueError(f"{where}: gene_ids= are needed to align a matrix to the gene reference")
    gene_ids = np.asarray(gene_ids, dtype=object)
    if x.ndim != 2 or x.shape[1] != len(gene_ids):
        raise ValueError(
            f"{where}: matrix has shape {x.shape} but {len(gene_ids)} gene IDs were given — "
            "expected samples × genes"
        )
    al = align_values(gene_ids, ref, "log1p_tpm" if values == "z" else values)
    covered = al.covered.copy()
    good = np.isfinite(st.std) & (st.std > 0)
    hidden = ~(covered & good)  # (G,)
    n_matched = int(covered.sum())
    coverage = n_matched / len(ref)
    if coverage < LOW_COVERAGE:
        log.warning(
            "%s: only %d of %d genes of the checkpoint's reference (%.0f%%) are in the input; "
            "embeddings of inputs with low coverage are less reliable",
            where,
            n_matched,
            len(ref),
            100 * coverage,
        )
    if values == "z":
        keep = al.gene_map >= 0
        if len(np.unique(al.gene_map[keep])) != int(keep.sum()):
            raise ValueError(f"{where}: duplicate gene IDs in z-scored input")
    sparse = hasattr(x, "tocsr") and not isinstance(x, np.ndarray)

    def rows(idx):
        block = x[idx]
        block = block.toarray() if sparse else np.asarray(block)
        if block.ndim == 1:
            block = block[None]
        if values == "z":
            if not np.isfinite(block).all():
                raise ValueError(f"{where}: non-finite z-scores")
            out = np.zeros((len(block), len(ref)), dtype=np.float32)
            out[:, al.gene_map[keep]] = block[:, keep]
            out[:, hidden] = 0.0
            return out
        check_values(block, values, where)
        v = to_log1p_tpm(block, al, values)  # (b, G)
        return zscore_ref(v, st.mean, st.std, covered).astype(np.float32)

    def missing(idx):
        n = len(range(x.shape[0])[idx]) if isinstance(idx, slice) else len(np.atleast_1d(idx))
        return np.broadcast_to(hidden, (n, len(ref))).copy()

    return PreparedInput(x.shape[0], obs, coverage, n_matched, kind, rows, missing)


def _anndata_input(adata, pretrained, values, layer, gene_column) -> PreparedInput:
    where = "AnnData"
    if layer is not None:
        if layer not in adata.layers:
            raise ValueError(
                f"AnnData has no layer {layer!r}; layers present: "
                f"{', '.join(adata.layers.keys()) or '(none)'} (layer=None reads X)"
            )
        x, where = adata.layers[layer], f"AnnData layers[{layer!r}]"
    else:
        x = adata.X
        where = "AnnData X"
    if gene_column is None:
        gene_ids = adata.var_names.to_numpy(dtype=object)
    elif gene_column not in adata.var.columns:
        raise ValueError(
            f"AnnData var has no column {gene_column!r}; available: "
            f"{', '.join(map(str, adata.var.columns)) or '(none)'} (default: var_names)"
        )
    else:
        gene_ids = adata.var[gene_column].astype(str).to_numpy(dtype=object)
    return _matrix_input(x, gene_ids, pretrained, values, adata.obs, "anndata", where)


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
) -> PreparedInput:
    """Align and standardize ``data`` for a checkpoint (lazily, row block by row block).

    Parameters
    ----------
    data : (N, J) numpy array (with ``gene_ids``), AnnData (samples × genes), a
        :class:`Corpus` or a corpus directory.
    pretrained : :class:`~bulkformer.model.pretrained.Pretrained`.
    values, gene_ids, layer, gene_column : see :func:`embed`.

    Raises
    ------
    ValueError
        Unknown ``values``, no gene IDs, a layer or var column that does not exist, bad numbers.
    ReferenceMismatchError
        A corpus built for another gene reference than the checkpoint's.
    """
    if isinstance(data, (str, os.PathLike)) and Path(data).is_dir():
        data = Corpus.open(data)
    if isinstance(data, Corpus):
        return _corpus_input(data, pretrained)
    if _is_anndata(data):
        return _anndata_input(data, pretrained, values, layer, gene_column)
    if isinstance(data, np.ndarray) or hasattr(data, "tocsr"):
        n = data.shape[0]
        obs = pd.DataFrame(index=pd.Index([str(i) for i in range(n)]))
        return _matrix_input(data, gene_ids, pretrained, values, obs, "numpy", "input matrix")
    raise TypeError(
        f"embed: data must be a numpy array, AnnData or Corpus (or its directory), got {type(data)}"
    )


def _is_anndata(x) -> bool:
    try:
        import anndata as ad
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, ad.AnnData)


def run_model(
    prep: PreparedInput,
    model,
    *,
    how: str = "mean",
    batch_size: int = 16,
    device=None,
    gene_level: bool = False,
    progress: bool = True,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Forward ``prep`` through ``model`` in eval mode, no gradients, batch by batch.

    Returns
    -------
    (n, D) float32 pooled embeddings and, with ``gene_level``, (n, G, D) float32 hidden states
    (else ``None``); ``n`` = len(rows) or all rows.
    """
    import torch
    from tqdm.auto import tqdm

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
    how: str = "mean",
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
    data : (N, J) numpy array or scipy sparse matrix, AnnData (N samples × J genes),
        :class:`~bulkformer.data.corpus.Corpus` or a corpus directory.
    pretrained : :class:`~bulkformer.model.pretrained.Pretrained` or its directory.
    values : what the matrix holds: ``"counts"`` (raw → TPM with gene lengths → log1p),
        ``"tpm"``, ``"log1p_tpm"``, or ``"z"`` (already z-scored with the checkpoint's
        statistics). Ignored for a corpus (always z-scores).
    gene_ids : (J,) Ensembl gene IDs of the numpy columns (required for numpy input).
    layer : AnnData: read ``layers[layer]`` instead of ``X``.
    gene_column : AnnData: ``var`` column with Ensembl IDs (default ``var_names``).
    how : pooling of gene embeddings over observed genes, ``"mean"`` or ``"max"``.
    batch_size : samples per forward pass.
    device : torch device; default CUDA when available, else CPU. The model is moved there.
    key_added : AnnData: ``obsm`` key of the (N, D) embeddings; gene-level ones go to
        ``obsm[key_added + "_genes"]``.
    gene_level : also return the (N, G, D) final hidden states (refused above 8 GiB).
    copy : AnnData: return a modified copy instead of writing into ``data``.
    progress : tqdm progress bar.

    Returns
    -------
    numpy / Corpus input: (N, D) float32 array, or ``(emb (N, D), genes (N, G, D))`` with
    ``gene_level``. AnnData: ``None`` (``data`` modified: ``obsm[key_added]``,
    ``uns["bulkformer"]``), or the modified copy when ``copy=True``.

    Sets (AnnData)
    --------------
    ``obsm[key_added]`` (N, D) float32; ``obsm[key_added + "_genes"]`` (N, G, D) with
    ``gene_level``; ``uns["bulkformer"]``: ``model`` (path), ``reference_id``, ``coverage``,
    ``n_genes_matched``, ``pooling``, ``values``, ``key_added`` (other keys already there are
    kept).
    """
    pre = resolve_pretrained(pretrained)
    prep = prepare_input(
        data, pre, values=values, gene_ids=gene_ids, layer=layer, gene_column=gene_column
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
