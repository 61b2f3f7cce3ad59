"""UMAP / t-SNE projections of embeddings and of the log1p(TPM) baseline, and cluster scores.

Feature sets wider than 50 columns are first reduced with PCA(50) (standard practice before
UMAP and t-SNE). Every step's wall time is recorded in the returned ``timings``.
Figures are drawn with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["project", "projections", "plot_projections", "cluster_scores", "METHODS"]

log = logging.getLogger(__name__)

METHODS = ("umap", "tsne")


def _reduce(X: np.ndarray, n: int = 50, seed: int = 0) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(X, dtype=np.float32)
    X = StandardScaler().fit_transform(X[:, X.std(axis=0) > 0]) if X.shape[1] > 1 else X
    if X.shape[1] > n and X.shape[0] > n:
        X = PCA(n, random_state=seed).fit_transform(X)
    return X


def project(X: np.ndarray, method: str = "umap", *, seed: int = 0) -> np.ndarray:
    """(N, F) features → (N, 2) UMAP or t-SNE coordinates (standardized; PCA(50) if F > 50)."""
    Xr = _reduce(X, seed=seed)
    n = len(Xr)
    if n < 4:
        raise ValueError(f"{method}: need at least 4 samples to project, got {n}")
    if method == "umap":
        import warnings

        import umap

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # n_jobs overridden by random_state, etc.
            return umap.UMAP(n_neighbors=min(15, n - 1), random_state=seed).fit_transform(Xr)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
        return TSNE(perplexity=perplexity, random_state=seed, init="pca").fit_transform(Xr)
    raise ValueError(f"method={method!r}: expected one of {METHODS}")


def projections(
    features: dict[str, np.ndarray], *, methods=METHODS, seed: int = 0
) -> tuple[dict, dict]:
    """Project every feature set with every method.

    Returns
    -------
    coords: ``{(feature name, method): (N, 2)}``; timings: ``{"umap:name": seconds, …}``.
    """
    coords, timings = {}, {}
    for name, X in features.items():
        for m in methods:
            t0 = time.perf_counter()
            coords[(name, m)] = project(X, m, seed=seed)
            timings[f"{m}:{name}"] = time.perf_counter() - t0
            log.info("%s of %s (%d × %d): %.1f s", m, name, *np.shape(X), timings[f"{m}:{name}"])
    return coords, timings


def plot_projections(coords: dict, labels, out, *, title: str | None = None) -> Path:
    """One panel per (feature set, method): rows = methods, columns = feature sets, coloured by
    ``labels``; saved as PNG at ``out``. Returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(k[0] for k in coords))
    methods = list(dict.fromkeys(k[1] for k in coords))
    y = pd.Series(np.asarray(labels)).astype(str)
    classes = sorted(y.unique())
    cmap = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
    fig, axes = plt.subplots(
        len(methods), len(names), figsize=(4.2 * len(names), 4.0 * len(methods)), squeeze=False
    )
    for i, m in enumerate(methods):
        for j, name in enumerate(names):
            ax = axes[i][j]
            c = coords[(name, m)]
            for k, cl in enumerate(classes):
                sel = (y == cl).to_numpy()
                ax.scatter(c[sel, 0], c[sel, 1], s=8, color=cmap(k % cmap.N), label=cl)
            ax.set_title(f"{name} — {m.upper() if m == 'umap' else 't-SNE'}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
    if len(classes) <= 20:
        axes[0][-1].legend(fontsize=7, markerscale=1.5, loc="best", frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def cluster_scores(X: np.ndarray, labels, *, seed: int = 0) -> dict:
    """Silhouette of the labels in the (standardized, PCA(50)) feature space, and the adjusted
    Rand index of k-means clusters (k = number of classes) against the labels."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    y = pd.Series(np.asarray(labels)).astype(str).to_numpy()
    Xr = _reduce(X, seed=seed)
    k = len(set(y))
    if k < 2 or k >= len(y):
        raise ValueError(f"cluster scores need 2 ≤ classes < samples, got {k} classes")
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(Xr)
    return {
        "silhouette": float(silhouette_score(Xr, y)),
        "ari_kmeans": float(adjusted_rand_score(y, km)),
    }
