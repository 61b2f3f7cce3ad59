"""The ESM2 gene matrix on disk, and alignment of embedding tables made elsewhere.

File format (safetensors, readable with ``safetensors.numpy.load_file``):

``embeddings``   float32 (G, d_esm), row g = gene g of the reference; zeros where no protein
``has_protein``  bool (G,)

String metadata: ``format`` (``bulkformer-esm/1``), ``model``, ``layer``, ``reference_id``,
``n_genes``, ``n_with_protein``, ``dim``, ``protein_choice``, ``bulkformer_version`` and
free-form provenance (source files, window, precision …).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from .._io import atomic_file
from ..data.genes import GeneReference, ReferenceMismatchError, strip_version

__all__ = [
    "FORMAT",
    "align_embedding_table",
    "load_esm_matrix",
    "matrix_metadata",
    "save_esm_matrix",
]

logger = logging.getLogger(__name__)

FORMAT = "bulkformer-esm/1"


def save_esm_matrix(
    path: str | os.PathLike,
    embeddings: np.ndarray,
    has_protein: np.ndarray,
    reference: GeneReference,
    metadata: dict,
) -> dict:
    """Write the gene matrix atomically (temporary file, then ``os.replace``).

    Parameters
    ----------
    path
        Output ``.safetensors`` file.
    embeddings
        (G, d) array aligned to ``reference``; stored as float32.
    has_protein
        (G,) bool.
    reference
        The gene reference the rows follow; its id and size are recorded.
    metadata
        Extra string-able facts (model, layer, protein_choice, …).

    Returns
    -------
    dict
        The metadata written (all values ``str``).
    """
    from safetensors.numpy import save_file

    path = os.fspath(path)
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    has = np.ascontiguousarray(has_protein, dtype=bool)
    g = len(reference)
    if emb.ndim != 2 or emb.shape[0] != g or has.shape != (g,):
        raise ValueError(
            f"embeddings {emb.shape} / has_protein {has.shape} do not match reference "
            f"{reference.id} with {g} genes; expected ({g}, d) and ({g},)"
        )
    meta = matrix_metadata(emb, has, reference, metadata)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with atomic_file(path, unique=True) as tmp:
        save_file({"embeddings": emb, "has_protein": has}, str(tmp), metadata=meta)
    logger.info("wrote %s: %d genes × %d, %d with protein", path, g, emb.shape[1], has.sum())
    return meta


def matrix_metadata(
    embeddings: np.ndarray, has_protein: np.ndarray, reference: GeneReference, metadata: dict
) -> dict:
    """String metadata of a gene matrix: ``metadata`` plus format, reference and size fields."""
    from .._version import __version__

    meta = {k: str(v) for k, v in metadata.items()}
    meta.update(
        format=FORMAT,
        reference_id=reference.id,
        n_genes=str(len(reference)),
        n_with_protein=str(int(np.asarray(has_protein).sum())),
        dim=str(np.shape(embeddings)[1]),
        bulkformer_version=__version__,
    )
    return meta


def load_esm_matrix(
    path: str | os.PathLike, reference: GeneReference | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read a gene matrix written by :func:`save_esm_matrix`.

    Parameters
    ----------
    path
        ``.safetensors`` file from ``bulkformer esm-embed`` / ``esm-align``.
    reference
        When given, the file must have been built for this reference.

    Returns
    -------
    embeddings : numpy.ndarray
        float32 (G, d).
    has_protein : numpy.ndarray
        bool (G,).
    metadata : dict
        String metadata (see module docstring).

    Raises
    ------
    ReferenceMismatchError
        ``reference`` is given and its id differs from the file's ``reference_id``.
    ValueError
        The file is not a bulkformer ESM matrix.
    """
    from safetensors import safe_open

    path = os.fspath(path)
    try:
        with safe_open(path, framework="numpy") as f:
            meta = dict(f.metadata() or {})
            names = set(f.keys())
            if not {"embeddings", "has_protein"} <= names:
                raise ValueError(
                    f"{path}: has tensors {sorted(names)}; expected 'embeddings' and "
                    "'has_protein' (a bulkformer ESM2 matrix)"
                )
            emb = f.get_tensor("embeddings")
            has = f.get_tensor("has_protein").astype(bool)
    except ValueError:
        raise
    except Exception as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a safetensors file ({e})") from e
    if "reference_id" not in meta:
        raise ValueError(f"{path}: metadata lacks 'reference_id'; not a bulkformer ESM2 matrix")
    if emb.ndim != 2 or emb.shape[0] != has.shape[0]:
        raise ValueError(
            f"{path}: embeddings {emb.shape} and has_protein {has.shape} disagree; expected "
            "(G, d) and (G,)"
        )
    if reference is not None:
        reference.check_same(meta["reference_id"], f"ESM2 matrix {path}")
        if emb.shape[0] != len(reference):  # same id but wrong row count: corrupted file
            raise ReferenceMismatchError(
                f"{path}: {emb.shape[0]} rows but reference {reference.id} has "
                f"{len(reference)} genes"
            )
    return emb, has, meta


# ------------------------------------------------------------------------------ alignment
def _read_ids(path: str) -> np.ndarray:
    """Gene IDs from a text file: one per line, or a table with a ``gene_id`` column."""
    with open(path) as f:
        first = f.readline().strip()
    sep = "\t" if "\t" in first else ("," if "," in first else None)
    if sep and "gene_id" in first.split(sep):
        return pd.read_csv(path, sep=sep, dtype=str)["gene_id"].to_numpy(object)
    with open(path) as f:
        ids = [line.strip() for line in f if line.strip()]
    return np.asarray(ids, dtype=object)


def _read_table(path: str, ids_path: str | None, id_column: str):
    """(ids (N,), values (N, d)) from a .pt / .npy / .tsv / .csv table."""
    low = path.lower()
    if low.endswith((".tsv", ".tsv.gz", ".csv", ".csv.gz", ".txt")):
        sep = "," if ".csv" in low else "\t"
        df = pd.read_csv(path, sep=sep)
        if id_column not in df.columns:
            raise ValueError(
                f"{path}: no {id_column!r} column (columns: {list(df.columns)[:6]}…); expected "
                f"a {id_column} column and one numeric column per embedding dimension"
            )
        vals = df.drop(columns=[id_column]).select_dtypes(include=[np.number])
        dropped = set(df.columns) - set(vals.columns) - {id_column}
        if dropped:
            logger.info("%s: ignoring non-numeric columns %s", path, sorted(dropped)[:5])
        return df[id_column].astype(str).to_numpy(object), vals.to_numpy(np.float32)
    if low.endswith(".npy"):
        if ids_path is None:
            raise ValueError(f"{path}: a .npy table needs --ids (a gene-id list, one per row)")
        return _read_ids(ids_path), np.load(path)
    if low.endswith((".pt", ".pth")):
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, torch.Tensor):
            if ids_path is None:
                raise ValueError(f"{path}: holds a bare tensor; pass --ids with its gene IDs")
            return _read_ids(ids_path), obj.float().numpy()
        if isinstance(obj, dict):
            lower = {str(k).lower(): k for k in obj}
            ek = next((lower[k] for k in ("embeddings", "embedding", "emb") if k in lower), None)
            ik = next((lower[k] for k in ("gene_ids", "genes", "ids") if k in lower), None)
            if ek is not None and ik is not None:
                return np.asarray(list(obj[ik]), dtype=object), _as_numpy(obj[ek])
            if obj and all(getattr(v, "ndim", None) == 1 for v in obj.values()):
                ids = np.asarray([str(k) for k in obj], dtype=object)
                return ids, np.stack([_as_numpy(v) for v in obj.values()])
        raise ValueError(
            f"{path}: expected a dict {{gene_id: 1-D tensor}}, a dict with 'embeddings' and "
            f"'gene_ids', or a 2-D tensor with --ids; got {type(obj).__name__}"
        )
    raise ValueError(f"{path}: unknown table type; expected .pt, .npy (+ --ids), .tsv or .csv")


def _as_numpy(x) -> np.ndarray:
    return x.float().numpy() if hasattr(x, "numpy") and hasattr(x, "float") else np.asarray(x)


def align_embedding_table(
    path: str | os.PathLike,
    reference: GeneReference,
    *,
    ids: str | os.PathLike | None = None,
    id_column: str = "gene_id",
    out: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Align an embedding table made elsewhere (e.g. BulkFormer's ESM2 file) to a reference.

    Parameters
    ----------
    path
        ``.pt`` (dict ``{gene_id: (d,) tensor}``, dict with ``embeddings`` (N, d) and
        ``gene_ids``, or an (N, d) tensor with ``ids``), ``.npy`` (N, d) with ``ids``, or a
        ``.tsv``/``.csv`` with an ``id_column`` and d numeric columns. Versioned IDs are fine.
    reference
        Target gene order (G genes).
    ids
        Gene-ID list for ``.npy``/bare tensors: one ID per line, or a table with ``gene_id``.
    id_column
        Name of the ID column in a TSV/CSV.
    out
        When given, also write the result with :func:`save_esm_matrix`.

    Returns
    -------
    embeddings, has_protein, metadata
        float32 (G, d), bool (G,), dict — as :func:`load_esm_matrix`. Genes of the reference
        absent from the table get zeros and ``has_protein=False``; extra genes are dropped.
    """
    path = os.fspath(path)
    gids, vals = _read_table(path, os.fspath(ids) if ids is not None else None, id_column)
    vals = np.asarray(vals, dtype=np.float32)
    if vals.ndim != 2 or vals.shape[0] != len(gids):
        raise ValueError(
            f"{path}: table of shape {vals.shape} with {len(gids)} gene IDs; expected "
            "(N, d) with one ID per row"
        )
    stripped = strip_version(gids)
    dup = pd.Index(stripped).duplicated()
    if dup.any():
        raise ValueError(
            f"{path}: duplicate gene IDs after removing versions, e.g. "
            f"{stripped[dup][:3].tolist()}; expected one row per gene"
        )
    pos = reference.index_of(stripped, strip=False)
    hit = pos >= 0
    if not hit.any():
        raise ValueError(
            f"{path}: none of its {len(gids)} gene IDs (e.g. {list(gids[:3])}) is in reference "
            f"{reference.id} (e.g. {reference.gene_ids[:3].tolist()}); expected Ensembl gene IDs"
        )
    emb = np.zeros((len(reference), vals.shape[1]), dtype=np.float32)
    has = np.zeros(len(reference), dtype=bool)
    emb[pos[hit]] = vals[hit]
    has[pos[hit]] = True
    logger.info(
        "%s: %d of %d reference genes found (%d table rows not in the reference)",
        path,
        has.sum(),
        len(reference),
        (~hit).sum(),
    )
    if (~has).any():
        logger.warning(
            "%d reference genes missing from %s (e.g. %s): zeros, has_protein=False",
            (~has).sum(),
            path,
            reference.gene_ids[~has][:5].tolist(),
        )
    meta = {"model": f"external:{os.path.basename(path)}", "layer": "", "protein_choice": ""}
    if out is not None:
        return emb, has, save_esm_matrix(out, emb, has, reference, meta)
    return emb, has, matrix_metadata(emb, has, reference, meta)
