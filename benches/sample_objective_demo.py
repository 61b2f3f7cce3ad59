"""Demo-scale comparison of sample-vector designs (the numbers of benches/RESULTS.md, "Sample
objective"): for each seed, build the bundled GEUVADIS demo corpus the way `bulkformer demo`
does (splits seeded, 512 most variable genes), pretrain the tiny preset with config overrides
(400 steps, batch 16, lr 3e-3), then score: linear probe of sex (5-fold, the demo's folds) on
the sample vector and on mean pooling, and imputation of 15% of the genes of the held-out
(val + test) rows by the token head, the sample decoder, gene mean, kNN (k = 10) and PCA-k
(the probabilistic-PCA imputer of ``bulkformer.eval.imputers``, k chosen on a held-out fifth of
the training rows), all fitted on the training rows only.

Run: SEEDS=0,1,2 PYTHONPATH=. python benches/sample_objective_demo.py NAME '{"config": "overrides"}'
Results are printed and appended to $OUT/results.jsonl (default /tmp/h5).
"""

import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bulkformer.data.archs4 import ARCHS4Source
from bulkformer.data.corpus import Corpus, build_corpus
from bulkformer.data.demo import demo_path
from bulkformer.data.derive import derive_corpus
from bulkformer.eval.embed import prepare_input, run_model
from bulkformer.eval.impute import imputation_scores, knn_impute, mask_genes
from bulkformer.eval.imputers import fit_pca_imputer
from bulkformer.eval.probe import labels_of, linear_probe, make_folds
from bulkformer.eval.report import _holdout
from bulkformer.model import BulkFormerConfig
from bulkformer.model.pretrained import load_pretrained
from bulkformer.train import pretrain

torch.set_num_threads(int(os.environ.get("NT", "1")))
logging.basicConfig(level=logging.WARNING)
ROOT = Path(os.environ.get("OUT", "/tmp/h5"))


def corpus_for(seed):
    d = ROOT / f"corpus{seed}"
    if not (d / "genes" / "manifest.json").exists():
        c = build_corpus(
            ARCHS4Source(demo_path()),
            d / "full",
            label="sex",
            min_nonzero=9000,
            splits=(0.8, 0.1, 0.1),
            seed=seed,
            progress=False,
            overwrite=True,
        )
        derive_corpus(c, d / "genes", n_genes=512, overwrite=True)
    return Corpus.open(d / "genes")


def run(name, seed, config_over, steps=400, lr=3e-3, bs=16, mask_fraction=0.15, preset="tiny"):
    c = corpus_for(seed)
    out = ROOT / "runs" / f"{name}_s{seed}"
    cfg = BulkFormerConfig.from_preset(
        preset, n_genes=c.n_genes, reference_id=c.manifest["reference"]["id"], **config_over
    )
    t = time.time()
    res = pretrain(
        str(c.path),
        str(out),
        config=cfg,
        steps=steps,
        batch_size=bs,
        lr=lr,
        seed=seed,
        device="cpu",
        progress=False,
        force=True,
        tensorboard=False,
        mask_fraction=mask_fraction,
        val_every=0,
    )
    tp = time.time() - t
    pre = load_pretrained(res.pretrained)
    prep = prepare_input(c, pre)
    y = labels_of(prep, "label")
    folds = make_folds(y, n_splits=5, seed=seed)
    r = {"name": name, "seed": seed, "pretrain_s": round(tp, 1)}
    for how in ("sample", "mean"):
        try:
            emb, _ = run_model(prep, pre.model, how=how, progress=False)
        except ValueError:
            continue
        r[f"probe_{how}"] = linear_probe(emb, y, folds, seed=seed).metrics["f1_weighted"]
    # imputation on the demo holdout (val+test rows), baselines fitted on train rows
    tr, te = _holdout(prep, seed)
    zt, ztr = prep.rows(te), prep.rows(tr)
    obs_t = ~prep.missing(te)
    obs_tr = ~prep.missing(tr)
    mask = mask_genes(obs_t, 0.15, seed)
    m = pre.model.eval()
    with torch.no_grad():
        o = m(
            torch.from_numpy(np.where(mask, 0, zt).astype(np.float32)),
            missing=torch.from_numpy(~obs_t),
            masked=torch.from_numpy(mask),
        )
    preds = {"token": o.pred.numpy()}
    if o.sample_pred is not None:
        preds["sample"] = o.sample_pred.numpy()
        preds["avg"] = 0.5 * (preds["token"] + preds["sample"])
    preds["gene_mean"] = np.broadcast_to(ztr.mean(0), zt.shape)
    preds["knn"] = knn_impute(ztr, obs_tr, zt, obs_t & ~mask, k=10)
    pca, k, _ = fit_pca_imputer(ztr, obs_tr, fraction=0.15, seed=seed)
    preds["pca"] = pca.predict(zt, obs_t & ~mask, k)
    r["pca_k"] = k
    st = pre.stats
    for kname, p in preds.items():
        sc = imputation_scores(zt, p, st.mean, st.std, mask)
        r[f"r_{kname}"] = round(sc["pearson_r"], 4)
        r[f"mse_{kname}"] = round(sc["mse_z"], 4)
    return r


if __name__ == "__main__":
    name = sys.argv[1]
    over = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    kw = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    seeds = [int(s) for s in os.environ.get("SEEDS", "0,1,2").split(",")]
    for seed in seeds:
        r = run(name, seed, over, **kw)
        print(json.dumps(r), flush=True)
        with open(ROOT / "results.jsonl", "a") as f:
            f.write(json.dumps({**r, "over": over, "kw": kw}) + "\n")
