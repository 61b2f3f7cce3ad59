"""ESM2 gene identity embeddings aligned to the gene reference.

One protein per gene (longest, or the ``Ensembl_canonical`` transcript's with a GTF; UniProt
FASTA mapped by gene symbol or an accession table, reviewed entries first) is embedded
with ESM2 and mean-pooled over residues; the (G, d_esm) matrix is written as safetensors with the
reference id, and read back with :func:`load_esm_matrix`::

    from bulkformer.esm import embed_genes, load_esm_matrix
    emb, has_protein, meta = embed_genes("Homo_sapiens.GRCh38.pep.all.fa.gz",
                                         "esm2_t33_650M_UR50D", reference=ref, out="esm2.st")
    emb, has_protein, meta = load_esm_matrix("esm2.st", reference=ref)

Command line: ``bulkformer esm-embed`` and ``bulkformer esm-align``. torch and fair-esm are
imported only when embedding.
"""

from __future__ import annotations

from ._cache import EmbeddingCache
from ._cli import add_parser
from ._embed import (
    ESM2_MODELS,
    ProteinEmbedder,
    esm2_packed,
    esm2_representation,
    load_esm2,
    plan_windows,
)
from ._genes import embed_genes
from ._matrix import align_embedding_table, load_esm_matrix, save_esm_matrix
from ._proteins import (
    GeneProteins,
    ProteinMapping,
    choose_proteins,
    clean_sequence,
    map_uniprot,
    read_canonical_transcripts,
    read_mapping_table,
    read_pep_fasta,
    read_proteins,
    read_uniprot_fasta,
)

__all__ = [
    "ESM2_MODELS",
    "EmbeddingCache",
    "GeneProteins",
    "ProteinMapping",
    "ProteinEmbedder",
    "add_parser",
    "align_embedding_table",
    "choose_proteins",
    "clean_sequence",
    "embed_genes",
    "esm2_packed",
    "esm2_representation",
    "load_esm2",
    "load_esm_matrix",
    "map_uniprot",
    "plan_windows",
    "read_canonical_transcripts",
    "read_mapping_table",
    "read_pep_fasta",
    "read_proteins",
    "read_uniprot_fasta",
    "save_esm_matrix",
]
