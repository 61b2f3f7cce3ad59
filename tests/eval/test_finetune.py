"""Fine-tuning: runs the same folds, leaves the pretrained model untouched, two LR groups."""

import numpy as np
import torch

from bulkformer.eval.embed import prepare_input
from bulkformer.eval.finetune import FinetuneClassifier, finetune_cv
from bulkformer.eval.probe import labels_of, make_folds


def test_finetune_cv(corpus, pretrained):
    prep = prepare_input(corpus, pretrained)
    y = labels_of(prep, "label")
    folds = make_folds(y, n_splits=2, seed=1)
    before = {k: v.clone() for k, v in pretrained.model.state_dict().items()}
    res = finetune_cv(prep, pretrained.model, y, folds, epochs=2, patience=1, batch_size=16)
    assert res.method == "finetune" and res.confusion.to_numpy().sum() == len(y)
    assert 0 <= res.metrics["accuracy"] <= 1 and len(res.extra["train_loss"]) == 2
    assert all(1 <= e <= 2 for e in res.extra["epochs_run"])
    for k, v in pretrained.model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_classifier_lr_groups_and_learning(corpus, pretrained):
    prep = prepare_input(corpus, pretrained)
    y = labels_of(prep, "label")
    clf = FinetuneClassifier(
        pretrained.model, np.array(["female", "male"]), lr=1e-2, encoder_lr_scale=0.1
    )
    lrs = [g["lr"] for g in clf.opt.param_groups]
    assert lrs == [1e-3, 1e-2]
    rows = np.arange(len(y))
    clf.fit(prep, rows, y, epochs=6, patience=None, batch_size=32)
    assert clf.history[-1] < clf.history[0]  # training loss goes down
    assert set(clf.predict(prep, rows[:7])) <= {"female", "male"}


def test_early_stopping_tracks_best():
    from bulkformer.eval.finetune import EarlyStopping

    es = EarlyStopping(patience=3)
    seen = []
    losses = [1.0, 0.8, 0.9, 0.95, 0.97, 0.1]
    stops = []
    for i, v in enumerate(losses):
        stops.append(es.update(v, lambda i=i: {"epoch": i}))
        seen.append(i)
        if stops[-1]:
            break
    assert stops == [False, False, False, False, True]  # 3 epochs without a new best
    assert es.best_epoch == 1 and es.best == 0.8 and es.best_state == {"epoch": 1}


class _Scripted(FinetuneClassifier):
    """Validation losses from a script; records the head weights at every epoch."""

    script = [1.0, 0.7, 0.9, 1.1, 1.2, 0.1, 0.1, 0.1]

    def _val_loss(self, prep, rows, target, batch_size):
        self.snapshots.append({k: v.clone() for k, v in self.head.state_dict().items()})
        self.val_rows_seen = np.asarray(rows)
        return self.script[len(self.snapshots) - 1]


def test_finetune_stops_when_val_loss_rises_and_restores_best(corpus, pretrained):
    prep = prepare_input(corpus, pretrained)
    y = labels_of(prep, "label")
    rows = np.r_[np.flatnonzero(y == "female")[:20], np.flatnonzero(y == "male")[:20]]
    clf = _Scripted(pretrained.model, np.array(["female", "male"]), lr=1e-2)
    clf.snapshots = []
    clf.fit(prep, rows, y[rows], epochs=8, patience=3, batch_size=16)
    assert clf.epochs_run == 5 and len(clf.history) == 5 and clf.best_epoch == 1
    assert clf.val_history == [1.0, 0.7, 0.9, 1.1, 1.2]
    for k, v in clf.head.state_dict().items():  # the weights of epoch 1, not the last
        torch.testing.assert_close(v, clf.snapshots[1][k], rtol=0, atol=0)
    assert any(not torch.equal(clf.snapshots[4][k], clf.snapshots[1][k]) for k in clf.snapshots[1])
    # the validation rows are a stratified share of the training rows, not trained on
    va = clf.val_rows_seen
    assert len(va) == 6 and set(va) <= set(rows) and len(set(y[va])) == 2
    # patience=None: every epoch on all rows, no validation
    plain = _Scripted(pretrained.model, np.array(["female", "male"]))
    plain.snapshots = []
    plain.fit(prep, rows, y[rows], epochs=3, patience=None)
    assert plain.epochs_run == 3 and plain.snapshots == [] and plain.best_epoch == 2
