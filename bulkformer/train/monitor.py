"""Training metrics: a CSV always, TensorBoard when installed, a loss-curve PNG at the end;
:class:`StepMonitor` feeds them (and the progress bar) from the training loop.

``metrics.csv`` has one row per logged training step (``kind = "train"``) and one per
validation (``kind = "val"``), columns :data:`COLUMNS`; empty cells where a value does not
apply. After a resume, rows beyond the checkpoint's step are dropped before appending, so the
file reads like one uninterrupted run.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["MetricsLog", "StepMonitor", "COLUMNS", "read_metrics", "plot_loss_curve"]

log = logging.getLogger(__name__)

COLUMNS = (
    "kind",
    "step",
    "epoch",
    "lr",
    "loss",
    "mse",
    "contrastive",
    "grad_norm",
    "tokens_per_s",
    "samples_per_s",
    "mfu",
    "val_mse",
    "val_baseline",
    "val_sample_mse",
    "val_gene_mean",
    "val_knn",
    "val_pca",
    "elapsed_s",
)


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a ``metrics.csv`` with numbers parsed (empty cells → None)."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append({k: (_num(v) if k != "kind" else v) for k, v in r.items()})
    return rows


def _num(v: str):
    if v == "" or v is None:
        return None
    f = float(v)
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


class MetricsLog:
    """Append metric rows to ``run/metrics.csv`` (and TensorBoard ``run/tb`` if available).

    Parameters
    ----------
    run : run directory
    resume_step : keep only rows with ``step <= resume_step`` of an existing file (None: start
        a fresh file)
    tensorboard : True / False / None (= when ``torch.utils.tensorboard`` imports)
    """

    def __init__(self, run: Path, resume_step: int | None, tensorboard: bool | None = None):
        self.path = Path(run) / "metrics.csv"
        kept = []
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, COLUMNS)
            w.writeheader()
            w.writerows(kept)
        self._f = open(self.path, "a", newline="")
        self._w = csv.DictWriter(self._f, COLUMNS)
        self.tb = None
        if tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run) / "tb"), purge_step=resume_step)
            except ImportError:
                if tensorboard:
                    raise
                log.info("tensorboard not installed: metrics go to %s only", self.path)

    def write(self, **row) -> None:
        clean = {k: ("" if v is None else v) for k, v in row.items()}
        try:
            self._w.writerow(clean)
            self._f.flush()
        except OSError as e:  # a full disk: name the file (the checkpoints are kept)
            raise OSError(
                e.errno, f"{self.path}: cannot append the metrics row ({e.strerror or e})"
            ) from e
        if self.tb is not None:
            step = int(row["step"])
            for k, v in row.items():
                if k in ("kind", "step", "epoch") or v is None:
                    continue
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(f"{row['kind']}/{k}", v, step)

    def close(self) -> None:
        self._f.close()
        if self.tb is not None:
            self.tb.close()


class StepMonitor:
    """Throughput windows, ``metrics.csv`` / TensorBoard rows and the progress bar of a
    training loop. Every rank keeps the windows; only ``main`` writes rows and shows the bar.

    Parameters
    ----------
    run : run directory
    main : this rank writes metrics and shows the bar
    resume_step : step of the checkpoint resumed (None: a fresh run)
    tensorboard, progress : as the options of the same names
    steps : optimizer steps of the whole run; ``initial``: the step the loop starts at
    log_every : a training row every N steps (and at the last step)
    tokens_per_step : global tokens of one optimizer step (all ranks, micro-batches, views)
    n_genes : tokens per sample
    mfu : tokens/s (global) → model FLOPs utilisation, or None (no MFU column)
    sync : called before reading the clock for a row (``torch.cuda.synchronize``), or None
    """

    def __init__(
        self,
        run: Path,
        *,
        main: bool,
        resume_step: int | None,
        tensorboard: bool | None,
        progress: bool,
        steps: int,
        initial: int,
        log_every: int,
        tokens_per_step: int,
        n_genes: int,
        mfu: Callable[[float], float] | None = None,
        sync: Callable[[], None] | None = None,
    ) -> None:
        self.metrics = MetricsLog(run, resume_step, tensorboard) if main else None
        self.bar = None
        if main and progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=steps, initial=initial, desc="pretrain", unit="step")
        self.steps, self.log_every = steps, max(1, log_every)
        self.tokens_per_step, self.n_genes = tokens_per_step, n_genes
        self.mfu, self.sync = mfu, sync
        self.window_loss: float | None = None  # mean loss of the last logged window
        self.t_start = time.perf_counter()
        self.t_win, self.steps_win, self.loss_win = time.perf_counter(), 0, []

    def train_step(self, step: int, epoch: int, **row) -> None:
        """Account for optimizer step ``step`` (loss, mse, contrastive, grad_norm, lr in
        ``row``); at every ``log_every``-th and the last step, write a training row."""
        self.steps_win += 1
        self.loss_win.append(row["loss"])
        now = time.perf_counter()
        if step % self.log_every == 0 or step == self.steps:
            if self.sync is not None:
                self.sync()
            dt = max(time.perf_counter() - self.t_win, 1e-9)
            tps = self.tokens_per_step * self.steps_win / dt
            if self.metrics is not None:
                self.metrics.write(
                    kind="train",
                    step=step,
                    epoch=epoch,
                    **row,
                    tokens_per_s=tps,
                    samples_per_s=tps / self.n_genes,
                    mfu=self.mfu(tps) if self.mfu is not None else None,
                    elapsed_s=now - self.t_start,
                )
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{np.mean(self.loss_win):.4f}", tok_s=f"{tps:,.0f}")
            self.window_loss = float(np.mean(self.loss_win))
            self.t_win, self.steps_win, self.loss_win = time.perf_counter(), 0, []
        if self.bar is not None:
            self.bar.update(1)

    def val(
        self,
        step: int,
        epoch: int,
        val_mse: float | None,
        val_baseline: float | None,
        **extra: float,
    ):
        """Write a validation row (nothing when there was no validation); ``extra``: more
        ``val_*`` columns (sample decoder and baseline MSEs)."""
        if self.metrics is not None and val_mse is not None:
            self.metrics.write(
                kind="val",
                step=step,
                epoch=epoch,
                val_mse=val_mse,
                val_baseline=val_baseline,
                elapsed_s=time.perf_counter() - self.t_start,
                **extra,
            )
            more = "".join(f", {k[4:]} {v:.4f}" for k, v in extra.items())
            log.info("step %d: val MSE %.4f vs z = 0 %.4f%s", step, val_mse, val_baseline, more)

    @contextmanager
    def aside(self):
        """Time spent inside (validation, checkpoints) does not count as step time."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.t_win += time.perf_counter() - t

    def mean_tokens_per_s(self, steps_done: int) -> float:
        """Global tokens/s over the whole loop so far (validation, checkpoints included)."""
        elapsed = time.perf_counter() - self.t_start
        return self.tokens_per_step * steps_done / elapsed if steps_done else 0.0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.metrics is not None:
            self.metrics.close()


def plot_loss_curve(metrics_csv: str | Path, out_png: str | Path, title: str = "") -> Path:
    """Plot train loss (masked MSE) and validation MSE beside the gene-mean baseline."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_csv)
    tr = [(r["step"], r["mse"]) for r in rows if r["kind"] == "train" and r["mse"] is not None]
    va = [r for r in rows if r["kind"] == "val" and r["val_mse"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if tr:
        ax.plot(*zip(*tr), lw=1, alpha=0.8, label="train masked MSE")
    if va:
        ax.plot([r["step"] for r in va], [r["val_mse"] for r in va], "o-", label="val MSE")
        ax.plot(
            [r["step"] for r in va],
            [r["val_baseline"] for r in va],
            "--",
            color="grey",
            label="val gene-mean baseline (z = 0)",
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("MSE on masked genes (z-score²)")
    ax.set_title(title or "BulkFormer pretraining")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return Path(out_png)
