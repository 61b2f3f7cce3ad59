"""Training metrics: a CSV always, TensorBoard when installed, a loss-curve PNG at the end.

``metrics.csv`` has one row per logged training step (``kind = "train"``) and one per
validation (``kind = "val"``), columns :data:`COLUMNS`; empty cells where a value does not
apply. After a resume, rows beyond the checkpoint's step are dropped before appending, so the
file reads like one uninterrupted run.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

__all__ = ["MetricsLog", "COLUMNS", "read_metrics", "plot_loss_curve"]

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
        self._w.writerow(clean)
        self._f.flush()
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
