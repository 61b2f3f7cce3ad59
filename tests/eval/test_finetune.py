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
    # validation before the first epoch (the probe's head: 1.0), then after each epoch
    assert clf.epochs_run == 4 and len(clf.history) == 4 and clf.best_epoch == 0
    assert clf.val_history == [1.0, 0.7, 0.9, 1.1, 1.2] and clf.probe is None
    for k, v in clf.head.state_dict().items():  # the weights of epoch 0, not the last
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


def _softmax(z):
    z = z - z.max(1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(1, keepdims=True)


def test_head_starts_as_the_linear_probe_binary_and_multiclass(corpus, pretrained):
    prep = prepare_input(corpus, pretrained)
    rows = np.arange(40)
    for names in (np.array(["female", "male"]), np.array(["a", "b", "c"])):
        target = np.arange(len(rows)) % len(names)  # class ids
        clf = FinetuneClassifier(pretrained.model, names)
        clf._init_head_as_probe(prep, rows, target)
        X = clf._frozen(prep, rows)
        want = clf._fit_probe(X, target).predict_proba(X)
        with torch.no_grad():
            got = _softmax(clf.head(torch.from_numpy(X).float()).double().numpy())
        np.testing.assert_allclose(got, want, atol=2e-4)


class _ProbeWins(_Scripted):
    script = [0.1, 0.5, 0.6, 0.7, 0.8]


def test_when_no_epoch_beats_the_probe_the_probe_refit_on_all_rows_predicts(corpus, pretrained):
    from bulkformer.eval.embed import run_model
    from bulkformer.eval.probe import probe_classifier

    prep = prepare_input(corpus, pretrained)
    y = labels_of(prep, "label")
    rows = np.r_[np.flatnonzero(y == "female")[:15], np.flatnonzero(y == "male")[:15]]
    test = np.setdiff1d(np.arange(len(y)), rows)
    clf = _ProbeWins(pretrained.model, np.array(["female", "male"]), lr=1e-2)
    clf.snapshots = []
    clf.fit(prep, rows, y[rows], epochs=6, patience=3, batch_size=16)
    assert clf.best_epoch == -1 and clf.epochs_run == 3 and clf.probe is not None
    # exactly the linear probe of bulkformer.eval.probe, fitted on all training rows
    emb, _ = run_model(prep, pretrained.model, progress=False)
    ref = probe_classifier(0).fit(emb[rows].astype(np.float64), y[rows])
    np.testing.assert_array_equal(
        clf.predict(prep, test), ref.predict(emb[test].astype(np.float64))
    )
