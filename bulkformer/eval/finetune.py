"""Fine-tuning: a classification head on the pooled embedding, the encoder at a lower LR.

Same folds and metrics as :mod:`bulkformer.eval.probe` (through
:func:`~bulkformer.eval.probe.cross_validate`), so the scores sit in one table with the linear
probe and the baselines. Every fold starts from a fresh copy of the pretrained weights.
"""

from __future__ import annotations

import copy
import logging

import numpy as np

from .probe import ClassificationResult, check_labels, cross_validate, labels_of, make_folds

__all__ = ["FinetuneClassifier", "finetune_cv", "finetune"]

log = logging.getLogger(__name__)


class FinetuneClassifier:
    """A BulkFormer encoder + ``BatchNorm(D) → Linear(D → C)`` head on the pooled
    (observed-gene) embedding.

    Parameters
    ----------
    model : pretrained :class:`~bulkformer.model.BulkFormer` (deep-copied; not modified).
    classes : the C class names.
    how : sample embedding, ``"sample"`` | ``"mean"`` | ``"max"``; None: ``config.pooling``.
    lr : head learning rate; the encoder gets ``lr * encoder_lr_scale``.
    """

    def __init__(
        self,
        model,
        classes,
        *,
        how: str | None = None,
        lr: float = 1e-2,
        encoder_lr_scale: float = 0.1,
        weight_decay: float = 0.01,
        device=None,
        seed: int = 0,
    ):
        import torch

        from .._device import resolve_device

        torch.manual_seed(seed)
        self.device = resolve_device(device)
        self.classes = np.asarray(classes, dtype=object)
        self.how = how
        self.encoder = copy.deepcopy(model).to(self.device)
        # The pooled embedding is standardized per feature (as the linear probe's features are)
        # before the linear layer: pooled hidden states are small and nearly collinear, and a
        # bare linear head barely moves in the few steps a small labelled set gives.
        d = model.config.d_model
        self.head = torch.nn.Sequential(
            torch.nn.BatchNorm1d(d), torch.nn.Linear(d, len(self.classes))
        ).to(self.device)
        self.opt = torch.optim.AdamW(
            [
                {"params": self.encoder.parameters(), "lr": lr * encoder_lr_scale},
                {"params": self.head.parameters(), "lr": lr},
            ],
            weight_decay=weight_decay,
        )
        self.seed = seed

    def _logits(self, x, miss):
        out = self.encoder(x, missing=miss)  # hidden (B, G, D)
        return self.head(out.pool(self.how).float())  # (B, C)

    def fit(self, prep, rows, y, *, epochs: int = 10, batch_size: int = 16, progress=False):
        """Train on ``rows`` of a :class:`~bulkformer.eval.embed.PreparedInput` (labels y)."""
        import torch
        from tqdm.auto import tqdm

        lut = {c: i for i, c in enumerate(self.classes)}
        target = np.array([lut[v] for v in y], dtype=np.int64)
        rng = np.random.default_rng(self.seed)
        self.encoder.train()
        self.head.train()
        self.history = []
        for _ in tqdm(range(epochs), desc="finetune", disable=not progress):
            order = rng.permutation(len(rows))
            total = 0.0
            for a in range(0, len(order), batch_size):
                b = order[a : a + batch_size]
                x = torch.from_numpy(prep.rows(rows[b])).to(self.device)
                m = torch.from_numpy(prep.missing(rows[b])).to(self.device)
                t = torch.from_numpy(target[b]).to(self.device)
                loss = torch.nn.functional.cross_entropy(self._logits(x, m), t)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                total += loss.item() * len(b)
            self.history.append(total / len(order))
        return self

    def predict(self, prep, rows, *, batch_size: int = 16) -> np.ndarray:
        """Predicted class names of ``rows``."""
        import torch

        self.encoder.eval()
        self.head.eval()
        out = []
        with torch.no_grad():
            for a in range(0, len(rows), batch_size):
                b = rows[a : a + batch_size]
                x = torch.from_numpy(prep.rows(b)).to(self.device)
                m = torch.from_numpy(prep.missing(b)).to(self.device)
                out.append(self._logits(x, m).argmax(1).cpu().numpy())
        return self.classes[np.concatenate(out)] if out else np.array([], dtype=object)


def finetune_cv(
    prep,
    model,
    labels,
    folds,
    *,
    how: str | None = None,
    epochs: int = 10,
    lr: float = 1e-2,
    encoder_lr_scale: float = 0.1,
    batch_size: int = 16,
    device=None,
    seed: int = 0,
    progress: bool = False,
) -> ClassificationResult:
    """Fine-tune a fresh copy of ``model`` on each training fold, score its test fold."""
    y = check_labels(labels, None)
    classes = np.array(sorted(set(y)), dtype=object)
    losses = []

    def fit_predict(tr, te):
        clf = FinetuneClassifier(
            model,
            classes,
            how=how,
            lr=lr,
            encoder_lr_scale=encoder_lr_scale,
            device=device,
            seed=seed,
        )
        clf.fit(prep, tr, y[tr], epochs=epochs, batch_size=batch_size, progress=progress)
        losses.append(clf.history)
        return clf.predict(prep, te, batch_size=batch_size)

    res = cross_validate("finetune", fit_predict, y, folds)
    res.extra = {
        "epochs": epochs,
        "lr": lr,
        "encoder_lr": lr * encoder_lr_scale,
        "train_loss": [h[-1] for h in losses if h],
    }
    return res


def finetune(
    data,
    pretrained,
    labels,
    *,
    values: str = "counts",
    gene_ids=None,
    layer: str | None = None,
    gene_column: str | None = None,
    how: str | None = None,
    n_splits: int = 5,
    split=None,
    seed: int = 0,
    epochs: int = 10,
    lr: float = 1e-2,
    encoder_lr_scale: float = 0.1,
    batch_size: int = 16,
    device=None,
    progress: bool = True,
) -> ClassificationResult:
    """Cross-validated fine-tuning of a checkpoint on labelled data.

    Parameters are those of :func:`bulkformer.eval.probe.probe`, plus ``epochs``, the head
    learning rate ``lr`` and ``encoder_lr_scale`` (encoder LR = lr × scale).
    """
    from .embed import prepare_input, resolve_pretrained

    pre = resolve_pretrained(pretrained)
    prep = prepare_input(
        data, pre, values=values, gene_ids=gene_ids, layer=layer, gene_column=gene_column
    )
    y = labels_of(prep, labels)
    folds = make_folds(y, n_splits=n_splits, seed=seed, split=split)
    return finetune_cv(
        prep,
        pre.model,
        y,
        folds,
        how=how,
        epochs=epochs,
        lr=lr,
        encoder_lr_scale=encoder_lr_scale,
        batch_size=batch_size,
        device=device,
        seed=seed,
        progress=progress,
    )
