"""bulkformer.eval: use a pretrained BulkFormer — embeddings, probes, fine-tuning, imputation,
UMAP/t-SNE, reports, and the end-to-end demo.

``embed(data, pretrained, ...)`` takes numpy (with ``gene_ids``), AnnData or a corpus; numpy in
gives numpy out, AnnData gets ``obsm["X_bulkformer"]`` (scanpy-style). Heavy imports (sklearn,
umap, matplotlib) happen inside the functions that need them.
"""

from .embed import embed, prepare_input
from .finetune import finetune
from .impute import impute_eval
from .probe import baselines, linear_probe, make_folds, probe
from .report import evaluate

__all__ = [
    "baselines",
    "embed",
    "evaluate",
    "finetune",
    "impute_eval",
    "linear_probe",
    "make_folds",
    "prepare_input",
    "probe",
]
