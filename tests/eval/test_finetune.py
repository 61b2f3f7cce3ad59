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
    res = finetune_cv(prep, pretrained.model, y, folds, epochs=2, batch_size=16)
    assert res.method == "finetune" and res.confusion.to_numpy().sum() == len(y)
    assert 0 <= res.metrics["accuracy"] <= 1 and len(res.extra["train_loss"]) == 2
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
    clf.fit(prep, rows, y, epochs=6, batch_size=32)
    assert clf.history[-1] < clf.history[0]  # training loss goes down
    assert set(clf.predict(prep, rows[:7])) <= {"female", "male"}
