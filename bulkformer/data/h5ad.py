"""AnnData (``.h5ad``) reader: an :class:`ExpressionSource` over ``X`` or a layer, read in row
blocks straight from the HDF5 file (never the whole matrix in memory).

``obs`` rows are samples (their metadata become :attr:`H5ADSource.samples`, labels included),
``var`` rows are genes. The matrix may be dense or sparse (CSR reads row blocks cheaply; CSC
works but each block reads whole columns — convert big CSC files to CSR first).

What the numbers are is the user's call (``values=``, see :mod:`bulkformer.data.matrix`):
``counts`` (raw, turned into TPM with gene lengths), ``tpm`` (taken as given — not renormalised
to 1e6 over the genes the reference covers — then log1p) or ``log1p_tpm`` (taken as given;
BulkFormer's PreBULK.h5ad is of this kind).

An AnnData object already in memory is read the same way by :func:`anndata_source` (the same
layer / gene-column handling and messages, over an :class:`~bulkformer.data.array.ArraySource`).
"""

from __future__ import annotations

import contextlib
import logging
import os

import h5py
import numpy as np
import pandas as pd

from .array import ArraySource
from .genes import GeneReference
from .matrix import align_matrix, check_value_kind, check_values, normalize_block
from .source import Alignment, Block, ExpressionSource

__all__ = ["H5ADSource", "anndata_matrix", "anndata_source", "gene_ids_of", "matrix_key"]

log = logging.getLogger(__name__)


def _read_elem(node):
    try:
        from anndata.io import read_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem
    return read_elem(node)


def _sparse_dataset(node):
    try:
        from anndata.io import sparse_dataset
    except ImportError:  # anndata < 0.11
        from anndata.experimental import sparse_dataset
    return sparse_dataset(node)


def open_h5(path: str) -> h5py.File:
    """``h5py.File(path, "r")`` whose failure names the file and, when the cause is a file lock,
    says what to do about it."""
    from .archs4_checks import lock_hint

    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise ValueError(
            f"{path}: cannot open as HDF5 ({e}){lock_hint(e) or '; expected an .h5ad file'}"
        ) from None


@contextlib.contextmanager
def _naming_errors(path: str, what: str):
    """Failures of h5py/anndata while reading ``what`` of a damaged or unusual file, as a
    ValueError naming the file (messages that already name it pass as they are)."""
    try:
        yield
    except (OSError, KeyError, RuntimeError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, ValueError) and path in str(e):
            raise
        text = " ".join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split())
        raise ValueError(
            f"{path}: cannot read {what} ({type(e).__name__}: {text[:300]}); expected an AnnData "
            ".h5ad file (damaged, or written by an incompatible tool?)"
        ) from e


def matrix_key(where: str, layers, layer: str | None, has_x: bool = True) -> str:
    """``"X"`` or ``"layers/<layer>"``; ValueError naming ``where`` and the layers present
    when ``layer`` (or X) does not exist."""
    layers = list(layers)
    if layer is None:
        if not has_x:
            raise ValueError(
                f"{where}: has no X matrix; pick a layer with layer= / --layer "
                f"(available: {', '.join(layers) or 'none'})"
            )
        return "X"
    if layer not in layers:
        raise ValueError(
            f"{where}: no layer {layer!r}; available layers: "
            f"{', '.join(layers) or 'none'} (omit layer to read X)"
        )
    return f"layers/{layer}"


def gene_ids_of(where: str, var: pd.DataFrame, gene_column: str | None) -> np.ndarray:
    """(J,) gene IDs: ``var_names`` or the ``var`` column ``gene_column`` (ValueError naming
    ``where`` and the columns present when it does not exist)."""
    if gene_column is None:
        return var.index.astype(str).to_numpy(dtype=object)
    if gene_column not in var.columns:
        raise ValueError(
            f"{where}: var has no column {gene_column!r}; available: "
            f"{', '.join(map(str, var.columns)) or '(none)'} (default: var_names)"
        )
    return var[gene_column].astype(str).to_numpy(dtype=object)


def _genes_field(gene_column: str | None) -> str:
    return f"var[{gene_column!r}]" if gene_column else "var_names"


def anndata_matrix(
    adata, *, layer: str | None = None, gene_column: str | None = None, where: str = "AnnData"
):
    """(matrix (N, J) as stored, gene IDs (J,), obs, name for messages) of an in-memory
    AnnData: ``X`` or ``layers[layer]``, genes from ``var_names`` or ``gene_column`` — the
    rules and messages of :class:`H5ADSource`."""
    key = matrix_key(where, adata.layers.keys(), layer, has_x=adata.X is not None)
    x = adata.X if key == "X" else adata.layers[layer]
    genes = gene_ids_of(where, adata.var, gene_column)
    obs = adata.obs.copy()
    obs.index = obs.index.astype(str)
    return x, genes, obs, f"{where} {key} ({_genes_field(gene_column)})"


def anndata_source(
    adata,
    *,
    layer: str | None = None,
    gene_column: str | None = None,
    values: str = "counts",
    where: str = "AnnData",
) -> ArraySource:
    """An in-memory AnnData (samples × genes) as an :class:`ArraySource` over ``X`` or
    ``layers[layer]`` (dense or sparse, not copied), genes from ``var_names`` or ``gene_column``,
    samples = ``obs`` (see :func:`anndata_matrix`)."""
    x, genes, obs, name = anndata_matrix(adata, layer=layer, gene_column=gene_column, where=where)
    return ArraySource(x, genes, obs, values=values, path=name)


class H5ADSource(ExpressionSource):
    """Samples of an ``.h5ad`` file.

    Parameters
    ----------
    path : the ``.h5ad`` file (samples × genes).
    layer : read ``layers[layer]`` instead of ``X``.
    gene_column : ``var`` column holding Ensembl gene IDs; default ``var_names``.
    values : ``"counts"`` (default), ``"tpm"`` or ``"log1p_tpm"``.
    length_column : ``var`` column with gene lengths in bp (counts only); default: the
        embedded Ensembl table when present, else the reference's lengths.

    Raises
    ------
    FileNotFoundError, ValueError
        Missing file, layer (the message lists the layers present), gene column (lists the
        ``var`` columns), duplicate sample IDs. Bad numbers (NaN, negative, non-integer counts)
        are found block by block in :meth:`read_block`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        layer: str | None = None,
        gene_column: str | None = None,
        values: str = "counts",
        length_column: str | None = None,
    ):
        self.path = os.fspath(path)
        self.values_kind = check_value_kind(values)
        self.layer = layer
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.path}: no such .h5ad file")
        with open_h5(self.path) as f, _naming_errors(self.path, "obs/var/X (AnnData layout)"):
            for key in ("obs", "var"):
                if key not in f:
                    raise ValueError(f"{self.path}: no '{key}' group — not an AnnData .h5ad file")
            obs = _read_elem(f["obs"])
            var = _read_elem(f["var"])
            self._elem = self._matrix_key(f)
            node = f[self._elem]
            if isinstance(node, h5py.Dataset):
                self._encoding = "dense"
                shape = node.shape
            else:
                self._encoding = node.attrs.get("encoding-type", "")
                if isinstance(self._encoding, bytes):
                    self._encoding = self._encoding.decode()
                if self._encoding not in ("csr_matrix", "csc_matrix"):
                    raise ValueError(
                        f"{self.path}: {self._elem} has encoding {self._encoding!r}; expected "
                        "a dense array, csr_matrix or csc_matrix"
                    )
                shape = tuple(int(v) for v in node.attrs["shape"])
        if shape != (len(obs), len(var)):
            raise ValueError(
                f"{self.path}: {self._elem} has shape {shape} but obs has {len(obs)} rows and "
                f"var {len(var)} — expected samples × genes"
            )
        if self._encoding == "csc_matrix":
            log.warning(
                "%s: %s is CSC-sparse: every row block reads whole columns (slow); "
                "convert to CSR (adata.X = adata.X.tocsr()) for large files",
                self.path,
                self._elem,
            )
        self._gene_ids = gene_ids_of(self.path, var, gene_column)
        self.gene_column = gene_column
        self.lengths = None
        if length_column is not None:
            if length_column not in var.columns:
                raise ValueError(
                    f"{self.path}: var has no column {length_column!r} (gene lengths); "
                    f"available: {', '.join(map(str, var.columns)) or '(none)'}"
                )
            self.lengths = pd.to_numeric(var[length_column], errors="coerce").to_numpy(float)
        obs = obs.copy()
        obs.index = obs.index.astype(str)
        if obs.index.duplicated().any():
            dup = obs.index[obs.index.duplicated()][:3].tolist()
            raise ValueError(f"{self.path}: duplicate obs_names (sample IDs), e.g. {dup}")
        self._samples = obs
        self._file: h5py.File | None = None

    def _matrix_key(self, f: h5py.File) -> str:
        layers = list(f["layers"].keys()) if "layers" in f else []
        return matrix_key(self.path, layers, self.layer, has_x="X" in f)

    # ------------------------------------------------------------------ interface
    @property
    def samples(self) -> pd.DataFrame:
        return self._samples

    @property
    def gene_ids(self) -> np.ndarray:
        return self._gene_ids

    def align(self, reference: GeneReference) -> Alignment:
        """Gene alignment of this source to ``reference`` (used by the corpus writer).

        By Ensembl ID; when not a single ID matches (a matrix indexed by gene symbol, as many
        ``.h5ad`` files are), by symbol instead, with a warning.
        """
        return align_matrix(
            self._gene_ids,
            reference,
            self.values_kind,
            lengths=self.lengths,
            where=f"{self.path} {_genes_field(self.gene_column)}",
        )

    def read_block(
        self, rows: np.ndarray, alignment: Alignment, *, threads: int | None = None
    ) -> Block:
        rows = np.asarray(rows, dtype=np.int64)
        x = self.read_matrix(rows)
        where = f"{self.path}: {self._elem}"
        check_values(x, self.values_kind, where, self._samples.index[rows])
        return normalize_block(x, alignment, self.values_kind, threads=threads)

    def read_matrix(self, rows: np.ndarray) -> np.ndarray:
        """Raw (n, J) numbers of samples ``rows`` (any order), dense."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.zeros((0, len(self._gene_ids)))
        if self._file is None:
            self._file = open_h5(self.path)
        uniq, inv = np.unique(rows, return_inverse=True)
        lo, hi = int(uniq[0]), int(uniq[-1]) + 1
        contiguous = hi - lo == len(uniq)
        with _naming_errors(self.path, f"{self._elem} rows {lo}…{hi - 1}"):
            node = self._file[self._elem]
            if self._encoding == "dense":
                x = node[lo:hi] if contiguous else node[uniq]
            else:
                ds = _sparse_dataset(node)
                x = ds[lo:hi] if contiguous else ds[uniq]
                x = x.toarray()
        return np.asarray(x)[inv]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self):  # picklable (the open file handle is not)
        d = dict(self.__dict__)
        d["_file"] = None
        return d
