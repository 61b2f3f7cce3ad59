"""ESM2 gene identity matrix for a gene reference: FASTA → one protein per gene → embeddings."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import numpy as np

from ..data.genes import GeneReference
from ._cache import EmbeddingCache
from ._embed import ProteinEmbedder, load_esm2
from ._matrix import matrix_metadata, save_esm_matrix
from ._proteins import choose_proteins, read_canonical_transcripts, read_proteins

__all__ = ["default_reference", "embed_genes"]

logger = logging.getLogger(__name__)


def default_reference() -> GeneReference:
    """The package's embedded gene reference (``GeneReference.default()``), when it exists."""
    default = getattr(GeneReference, "default", None)
    if default is None:
        raise ValueError(
            "no default gene reference in this bulkformer version; pass --genes REFERENCE.tsv "
            "(reference= in the Python API)"
        )
    return default()


def embed_genes(
    pep: str | os.PathLike,
    model,
    *,
    alphabet=None,
    reference: GeneReference | None = None,
    gtf: str | os.PathLike | None = None,
    layer: int | None = None,
    toks_per_batch: int = 4096,
    device: str = "auto",
    precision: str = "auto",
    window: int = 1022,
    stride: int = 511,
    out: str | os.PathLike | None = None,
    keep_cache: bool = False,
    model_name: str | None = None,
    progress: bool = True,
    mapping=None,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """ESM2 mean-pooled protein embedding of every gene of a reference.

    Parameters
    ----------
    pep
        Ensembl peptide FASTA (``Homo_sapiens.GRCh38.pep.all.fa[.gz]``) or UniProt FASTA
        (``>sp|P04637|P53_HUMAN … GN=TP53 …``; mapped to genes by ``mapping`` or by symbol, see
        :mod:`bulkformer.esm._proteins`).
    model
        A fair-esm ESM2 name (``"esm2_t33_650M_UR50D"``), a local ESM2 checkpoint path, or an
        in-memory ``esm.model.esm2.ESM2`` (then ``alphabet`` defaults to ``model.alphabet``).
    alphabet
        ``esm.data.Alphabet`` of an in-memory model.
    reference
        Gene order of the output (G genes); default ``GeneReference.default()``.
    gtf
        Ensembl GTF: use each gene's ``Ensembl_canonical`` transcript's protein (falling back
        to the longest). Without it, the longest protein.
    layer, toks_per_batch, device, precision, window, stride
        See :class:`ProteinEmbedder`.
    out
        Output ``.safetensors``; finished proteins are cached in ``OUT.cache/`` so that a rerun
        after a crash skips them. The cache is removed after success unless ``keep_cache``.
    keep_cache
        Keep ``OUT.cache/`` after writing ``out``.
    model_name
        Name recorded in the metadata (default: the hub name / file name, or ``"ESM2(...)"``).
    progress
        Show a progress bar.
    on_batch
        Called as ``on_batch(i, n_batches)`` after each batch is cached.
    mapping
        UniProt FASTA only: accession → gene_id table (path or DataFrame with columns
        ``accession``, ``gene_id``); default: match ``GN=`` symbols to the reference.

    Returns
    -------
    embeddings : numpy.ndarray
        float32 (G, d_esm); zeros for genes without protein.
    has_protein : numpy.ndarray
        bool (G,).
    metadata : dict
        As written to ``out`` (model, layer, reference_id, n_genes, protein_choice, …).
    """
    if reference is None:
        reference = default_reference()
    pep = os.fspath(pep)
    # read inputs before loading a large model, so bad input fails fast
    proteins, mapping_report = read_proteins(pep, reference, mapping=mapping)
    if gtf is not None and mapping_report is not None:
        logger.warning("%s: UniProt proteins have no Ensembl transcripts; --gtf ignored", pep)
        gtf = None
    canonical = read_canonical_transcripts(gtf) if gtf is not None else None
    chosen = choose_proteins(proteins, reference, canonical=canonical, source=pep)

    if isinstance(model, (str, os.PathLike)):
        model, alphabet, name = load_esm2(model)
    else:
        name = (
            f"ESM2(custom: {getattr(model, 'num_layers', '?')} layers, "
            f"d={getattr(model, 'embed_dim', '?')})"
        )
    name = model_name or name
    emb_er = ProteinEmbedder(
        model,
        alphabet,
        layer=layer,
        toks_per_batch=toks_per_batch,
        device=device,
        precision=precision,
        window=window,
        stride=stride,
        progress=progress,
    )
    cache = None
    if out is not None:
        cache = EmbeddingCache(f"{os.fspath(out)}.cache", {"model": name, **emb_er.config()})
    present = np.flatnonzero(chosen.has_protein)
    vecs = emb_er.embed([chosen.sequences[i] for i in present], cache=cache, on_batch=on_batch)
    emb = np.zeros((len(reference), emb_er.dim), dtype=np.float32)
    emb[present] = vecs
    meta = {
        "model": name,
        "layer": emb_er.layer,
        "protein_choice": chosen.choice,
        "n_canonical": chosen.n_canonical,
        "pep": os.path.basename(pep),
        "gtf": os.path.basename(os.fspath(gtf)) if gtf is not None else "",
        "window": emb_er.window,
        "stride": emb_er.stride,
        "precision": emb_er.precision,
        "model_fingerprint": emb_er.fingerprint,
    }
    if mapping_report is not None:
        meta["protein_mapping"] = mapping_report.summary()
        meta["mapping"] = (
            os.path.basename(os.fspath(mapping))
            if isinstance(mapping, (str, os.PathLike))
            else ("table" if mapping is not None else "")
        )
    if out is not None:
        meta = save_esm_matrix(out, emb, chosen.has_protein, reference, meta)
        if not keep_cache:
            cache.remove()
    else:
        meta = matrix_metadata(emb, chosen.has_protein, reference, meta)
    logger.info(
        "ESM2 gene matrix: %d genes, %d with protein, %d without; d=%d, model %s, layer %d",
        len(reference),
        chosen.has_protein.sum(),
        (~chosen.has_protein).sum(),
        emb_er.dim,
        name,
        emb_er.layer,
    )
    return emb, chosen.has_protein.copy(), meta
