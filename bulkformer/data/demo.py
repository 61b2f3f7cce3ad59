"""Bundled real demo data: GEUVADIS lymphoblastoid cell lines (85 samples, sex labels).

``demo_geuvadis.h5`` is an ARCHS4 v2-format file (``data/expression`` uint32 genes × samples,
``meta/genes``, ``meta/samples``, ``meta/info``) holding integer read counts of 10,101 genes
in 85 GEUVADIS samples (41 female, 44 male; ``meta/samples/sex``), converted from Bioconductor
DEGreport's ``humanGender`` by ``scripts/make_demo_data.py``. It opens with any ARCHS4 reader
and is meant for examples, tests and smoke runs (e.g. a sex-classification probe).
Provenance: ``meta/info/provenance`` and ``bulkformer/resources/PROVENANCE.md``.
"""

from __future__ import annotations

from .genes import resource_path

__all__ = ["demo_path", "DEMO_FILE", "DEMO_MIN_NONZERO", "DEMO_N_SAMPLES", "DEMO_N_GENES"]

DEMO_FILE = "demo_geuvadis.h5"
DEMO_N_SAMPLES = 85
DEMO_N_GENES = 10101
#: the QC threshold (non-zero genes) for the demo file alone: it holds only 10,101 genes, so
#: the bulk default (:data:`bulkformer.data.corpus.DEFAULT_MIN_NONZERO`) would drop them all
DEMO_MIN_NONZERO = 9_000


def demo_path() -> str:
    """Path of the bundled GEUVADIS demo file (ARCHS4 layout; open read-only)."""
    return resource_path(DEMO_FILE)
