"""Fine-tuning: a classification head on the pooled embedding, the encoder at a lower LR.

Same folds and metrics as :mod:`bulkformer.eval.probe` (through
:func:`~bulkformer.eval.probe.cross_validate`), so the scores sit in one table with the linear
probe and the baselines. Every fold starts from a fresh copy of the pretrained weights.

Linear probing, then fine-tuning (LP-FT, Kumar et al. 2022): the head starts as the linear
probe's logistic regression, fitted on the frozen embeddings of the training rows, so
fine-tuning starts from the probe's answer instead of a random head (which, on a few dozen
labelled samples, distorts the pretrained features before the head is any good).

Training runs until the validation loss stops falling: a stratified ``val_fraction`` of each
training fold is held out, the cross-entropy on it is computed before the first epoch (the
probe's head) and after every epoch, training stops after ``patience`` epochs without a new
best (or at ``epochs``, the cap), and the weights of the best epoch are restored before the test
fold is predicted. When no epoch beats the probe's head on the validation rows, fine-tuning has
not helped: the classifier is then the linear probe refitted on all training rows (exactly what
:func:`~bulkformer.eval.probe.linear_probe` fits), so ``best_epoch == -1`` and the fold's score
is the probe's.
"""

from __future__ import annotations

import copy
import logging

import numpy as np

from .probe import ClassificationResult, check_labels, cross_validate, labels_of, make_folds

__all__ = ["EarlyStopping", "FinetuneClassifier", "finetune_cv", "finetune"]

log = logging.getLogger(__name__)


class EarlyStopping:
    """Track a validation loss; keep a copy of the state of the best epoch.

    ``update(loss, state)`` returns True when training should stop: ``patience`` updates in a
    row brought no loss below ``best − min_delta``. ``state()`` is called (and its result
    deep-copied) only when the loss improves.
    """

    def __init__(self, patience: int = 3, min_delta: float = 0.0, first_epoch: int = 0):
        if patience < 1:
            raise ValueError(f"patience = {patience}: need at least 1")
        self.patience, self.min_delta = patience, min_delta
        self.best = float("inf")
        self.best_epoch = first_epoch - 1
        self.best_state = None
        self.epoch = first_epoch - 1  # the first update() is epoch ``first_epoch``
        self.bad = 0

    def update(self, loss: float, state) -> bool:
        self.epoch += 1
        if loss < self.best - self.min_delta:
            self.best, self.best_epoch, self.bad = float(loss), self.epoch, 0
            self.best_state = copy.deepcopy(state())
        else:
            self.bad += 1
        return self.bad >= self.patience


def _val_split(rows, y, fraction: float, seed: int):
    """(fit rows, validation rows): stratified when every class can give one, else random;
    no validation rows when the fold is too small to spare any."""
    n, classes = len(rows), sorted(set(y))
    n_val = int(round(fraction * n))
    if n_val < 1 or n - n_val < 2:
        return rows, rows[:0]
    from sklearn.model_selection import train_test_split

    counts = {c: int(np.sum(y == c)) for c in classes}
    strat = y if min(counts.values()) >= 2 and n_val >= len(classes) else None
    fi, va = train_test_split(np.arange(n), test_size=n_val, random_state=seed, stratify=strat)
    return rows[np.sort(fi)], rows[np.sort(va)]


def _standardizer(d: int):
    """``(x − mean) / std`` per feature, with buffers set from the frozen embeddings."""
    import torch

    class Standardize(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.zeros(d))
            self.register_buffer("scale", torch.ones(d))

        def forward(self, x):
            return (x - self.mean) / self.scale

    return Standardize()


class FinetuneClassifier:
    """A BulkFormer encoder + ``Standardize(D) → Linear(D → C)`` head on the sample embedding,
    the head initialised as the linear probe (see the module doc).

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
        # The embedding is standardized per feature with the statistics of the frozen
        # embeddings of the training rows (as the linear probe's features are), then the
        # linear layer, initialised as the probe's logistic regression in fit().
        d = model.config.d_model
        self.head = torch.nn.Sequential(_standardizer(d), torch.nn.Linear(d, len(self.classes)))
        self.head = self.head.to(self.device)
        self.probe = None  # the refitted linear probe, when fine-tuning did not beat it
        self.opt = torch.optim.AdamW(
            [
                {"params": self.encoder.parameters(), "lr": lr * encoder_lr_scale},
                {"params": self.head.parameters(), "lr": lr},
            ],
            weight_decay=weight_decay,
        )
        self.seed = seed

    def _batches(self, prep, rows, batch_size: int):
        """``(b, x, missing)`` per batch of ``rows``: the row indices and their tensors on the
        device."""
        import torch

        for a in range(0, len(rows), batch_size):
            b = rows[a : a + batch_size]
            x = torch.from_numpy(prep.rows(b)).to(self.device)
            yield b, x, torch.from_numpy(prep.missing(b)).to(self.device)

    def _embed(self, x, miss):
        """(B, D) sample embeddings by the current encoder (``how``; None: the model's
        default)."""
        out = self.encoder(x, missing=miss)
        return (out.pool(self.how) if self.how else out.pool()).float()

    def _logits(self, x, miss):
        return self.head(self._embed(x, miss))  # (B, C)

    def fit(
        self,
        prep,
        rows,
        y,
        *,
        epochs: int = 50,
        patience: int | None = 3,
        val_fraction: float = 0.15,
        batch_size: int = 16,
        progress=False,
    ):
        """Train on ``rows`` of a :class:`~bulkformer.eval.embed.PreparedInput` (labels y).

        Parameters
        ----------
        rows : (n,) row indices; y : (n,) their labels.
        epochs : the most epochs.
        patience : stop after this many epochs without a lower validation loss and restore
            the best epoch's weights; ``None``: train all ``epochs`` on all rows.
        val_fraction : share of ``rows`` held out (stratified) for the validation loss.

        Sets ``history`` (training loss per epoch), ``val_history`` (validation loss per
        epoch, the probe's head first), ``best_epoch`` (0-based; its weights are the ones kept;
        −1: no epoch beat the probe, which is then refitted on all ``rows`` and predicts, see
        ``probe``) and ``epochs_run``.
        """
        import torch
        from tqdm.auto import tqdm

        rows = np.asarray(rows, dtype=np.int64)
        y = np.asarray(y, dtype=object)
        lut = {c: i for i, c in enumerate(self.classes)}
        target = dict(zip(rows.tolist(), (lut[v] for v in y)))
        fit_rows, val_rows = rows, rows[:0]
        if patience is not None:
            fit_rows, val_rows = _val_split(rows, y, val_fraction, self.seed)
            if len(val_rows) == 0:
                log.warning(
                    "fine-tuning: %d training rows are too few to hold out a validation split; "
                    "training %d epochs without early stopping",
                    len(rows),
                    epochs,
                )
        stop = EarlyStopping(patience, first_epoch=-1) if len(val_rows) else None
        rng = np.random.default_rng(self.seed)
        self.history, self.val_history = [], []
        self.best_epoch = epochs - 1
        self.probe = None
        self._init_head_as_probe(prep, fit_rows, np.array([target[i] for i in fit_rows.tolist()]))
        val_target = [target[i] for i in val_rows.tolist()]
        if stop is not None:  # epoch −1: the probe's head, before any fine-tuning
            vl = self._val_loss(prep, val_rows, val_target, batch_size)
            self.val_history.append(vl)
            stop.update(vl, self._state)
        bar = tqdm(range(epochs), desc="finetune", disable=not progress)
        for _ in bar:
            self.encoder.train()
            self.head.train()
            order = fit_rows[rng.permutation(len(fit_rows))]
            total = 0.0
            for b, x, m in self._batches(prep, order, batch_size):
                t = torch.tensor([target[i] for i in b.tolist()], device=self.device)
                loss = torch.nn.functional.cross_entropy(self._logits(x, m), t)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                total += loss.item() * len(b)
            self.history.append(total / len(order))
            if stop is None:
                continue
            vl = self._val_loss(prep, val_rows, val_target, batch_size)
            self.val_history.append(vl)
            if stop.update(vl, self._state):
                break
        self.epochs_run = len(self.history)
        if stop is not None:
            self.best_epoch = stop.best_epoch
            self.encoder.load_state_dict(stop.best_state["encoder"])
            self.head.load_state_dict(stop.best_state["head"])
            if self.best_epoch < 0:  # no epoch beat the probe: the probe, on all rows
                self.probe = self._fit_probe(self._frozen(prep, rows, batch_size), y)
        return self

    def _frozen(self, prep, rows, batch_size: int = 16) -> np.ndarray:
        """(n, D) float64 embeddings of ``rows`` by the current encoder, in eval mode."""
        import torch

        self.encoder.eval()
        with torch.no_grad():
            out = [
                self._embed(x, m).cpu().numpy() for _, x, m in self._batches(prep, rows, batch_size)
            ]
        D = self.encoder.config.d_model
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, D))

    def _fit_probe(self, X: np.ndarray, y: np.ndarray):
        """The linear probe's pipeline (standardize → logistic regression) fitted on X, y."""
        from .probe import probe_classifier

        return probe_classifier(self.seed).fit(X, y)

    def _init_head_as_probe(self, prep, rows, target: np.ndarray) -> None:
        """Set the head to the probe fitted on the frozen embeddings of ``rows`` (class ids)."""
        import torch

        X = self._frozen(prep, rows)
        pipe = self._fit_probe(X, target)
        sc, lr = pipe[0], pipe[-1]
        C = len(self.classes)
        W = np.zeros((C, X.shape[1]))
        b = np.zeros(C)
        if len(lr.classes_) == 1:  # one class in this fold: it wins everywhere
            b[int(lr.classes_[0])] = 1.0
        elif len(lr.classes_) == 2:  # binary: logit(c1) − logit(c0) = coef · x + intercept
            c0, c1 = (int(c) for c in lr.classes_)
            W[c0], W[c1] = -0.5 * lr.coef_[0], 0.5 * lr.coef_[0]
            b[c0], b[c1] = -0.5 * lr.intercept_[0], 0.5 * lr.intercept_[0]
        else:  # multinomial: one row per class seen; unseen classes stay far below
            b[:] = lr.intercept_.min() - 30.0
            for j, c in enumerate(lr.classes_):
                W[int(c)], b[int(c)] = lr.coef_[j], lr.intercept_[j]
        std, lin = self.head[0], self.head[1]
        with torch.no_grad():
            std.mean.copy_(torch.as_tensor(sc.mean_, dtype=torch.float32))
            std.scale.copy_(torch.as_tensor(sc.scale_, dtype=torch.float32))
            lin.weight.copy_(torch.as_tensor(W, dtype=torch.float32))
            lin.bias.copy_(torch.as_tensor(b, dtype=torch.float32))

    def _state(self) -> dict:
        return {"encoder": self.encoder.state_dict(), "head": self.head.state_dict()}

    def _val_loss(self, prep, rows, target, batch_size: int) -> float:
        """Mean cross-entropy of ``rows`` in eval mode."""
        import torch

        self.encoder.eval()
        self.head.eval()
        total = 0.0
        with torch.no_grad():
            for i, (_, x, m) in enumerate(self._batches(prep, rows, batch_size)):
                a = i * batch_size
                t = torch.tensor(target[a : a + batch_size], device=self.device)
                loss = torch.nn.functional.cross_entropy(self._logits(x, m), t, reduction="sum")
                total += loss.item()
        return total / len(rows)

    def predict(self, prep, rows, *, batch_size: int = 16) -> np.ndarray:
        """Predicted class names of ``rows``."""
        import torch

        if self.probe is not None:
            return np.asarray(
                self.probe.predict(self._frozen(prep, rows, batch_size)), dtype=object
            )

        self.encoder.eval()
        self.head.eval()
        with torch.no_grad():
            out = [self._logits(x, m).argmax(1).cpu().numpy()
                   for _, x, m in self._batches(prep, rows, batch_size)]  # fmt: skip
        return self.classes[np.concatenate(out)] if out else np.array([], dtype=object)


def finetune_cv(
    prep,
    model,
    labels,
    folds,
    *,
    how: str | None = None,
    epochs: int = 50,
    patience: int | None = 3,
    lr: float = 1e-2,
    encoder_lr_scale: float = 0.1,
    batch_size: int = 16,
    device=None,
    seed: int = 0,
    progress: bool = False,
) -> ClassificationResult:
    """Fine-tune a fresh copy of ``model`` on each training fold, score its test fold.

    ``epochs`` caps the epochs; with ``patience`` (see :meth:`FinetuneClassifier.fit`) each
    fold stops when its validation loss stops falling and keeps its best epoch's weights.
    ``extra`` records, per fold, the epochs run, the best epoch and the final losses.
    """
    y = check_labels(labels, None)
    classes = np.array(sorted(set(y)), dtype=object)

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
        clf.fit(
            prep,
            tr,
            y[tr],
            epochs=epochs,
            patience=patience,
            batch_size=batch_size,
            progress=progress,
        )
        fits.append(clf)
        return clf.predict(prep, te, batch_size=batch_size)

    fits = []
    res = cross_validate("finetune", fit_predict, y, folds)
    res.extra = {
        "max_epochs": epochs,
        "patience": patience,
        "lr": lr,
        "encoder_lr": lr * encoder_lr_scale,
        "epochs_run": [c.epochs_run for c in fits],
        "best_epoch": [c.best_epoch for c in fits],
        "train_loss": [c.history[-1] for c in fits if c.history],
        "val_loss": [min(c.val_history) for c in fits if c.val_history],
    }
    log.info(
        "finetune: epochs run per fold %s (best %s, cap %d)",
        res.extra["epochs_run"],
        res.extra["best_epoch"],
        epochs,
    )
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
    epochs: int = 50,
    patience: int | None = 3,
    lr: float = 1e-2,
    encoder_lr_scale: float = 0.1,
    batch_size: int = 16,
    device=None,
    progress: bool = True,
) -> ClassificationResult:
    """Cross-validated fine-tuning of a checkpoint on labelled data.

    Parameters are those of :func:`bulkformer.eval.probe.probe`, plus ``epochs`` (the cap),
    ``patience`` (early stopping on a validation split of each training fold), the head
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
        patience=patience,
        lr=lr,
        encoder_lr_scale=encoder_lr_scale,
        batch_size=batch_size,
        device=device,
        seed=seed,
        progress=progress,
    )
