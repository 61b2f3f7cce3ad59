"""Append-only on-disk cache of finished protein embeddings, so that a killed run resumes.

Layout (next to the output file ``OUT``)::

    OUT.cache/<config-hash>/config.json         what the embeddings depend on (model, layer, …)
    OUT.cache/<config-hash>/part-<n>-<r>.npz    keys <U40 (N,), emb float32 (N, d); one per batch

Entries are keyed by the SHA-1 of the protein sequence, so a gene whose chosen protein changes
(e.g. ``--gtf`` added) is recomputed. Each part is written to a temporary file and renamed, so a
kill loses at most the batch in flight; a different model, layer, window or precision hashes to
another directory and never reuses these entries.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import uuid
from collections.abc import Sequence

import numpy as np

from .._io import write_atomic

__all__ = ["EmbeddingCache", "sequence_key"]

logger = logging.getLogger(__name__)


def sequence_key(seq: str) -> str:
    """Cache key of a protein sequence: 40 hex digits of SHA-1."""
    return hashlib.sha1(seq.encode()).hexdigest()


class EmbeddingCache:
    """Directory of ``.npz`` parts holding embeddings of finished proteins.

    Parameters
    ----------
    root
        Cache directory (``OUT.cache``); created on first write.
    config
        JSON-serialisable description of everything the embeddings depend on; its hash names
        the subdirectory actually used.
    """

    def __init__(self, root: str | os.PathLike, config: dict) -> None:
        self.root = os.fspath(root)
        self.config = dict(config)
        blob = json.dumps(self.config, sort_keys=True).encode()
        self.dir = os.path.join(self.root, hashlib.sha1(blob).hexdigest()[:16])

    def load(self) -> dict[str, np.ndarray]:
        """All cached embeddings, ``{key: float32 (d,)}``; unreadable parts are skipped."""
        out: dict[str, np.ndarray] = {}
        if not os.path.isdir(self.dir):
            return out
        for name in sorted(os.listdir(self.dir)):
            path = os.path.join(self.dir, name)
            if name.endswith(".tmp"):  # left by a kill during a write
                os.remove(path)
                continue
            if not (name.startswith("part-") and name.endswith(".npz")):
                continue
            try:
                with np.load(path) as z:
                    keys, emb = z["keys"], z["emb"]
            except Exception as e:  # noqa: BLE001 - a damaged part only costs recomputation
                logger.warning("cache part %s is unreadable (%s); ignoring it", path, e)
                continue
            for k, v in zip(keys.tolist(), emb):
                out[k] = v
        if out:
            logger.info("cache %s: %d proteins already embedded", self.dir, len(out))
        return out

    def add(self, keys: Sequence[str], emb: np.ndarray) -> None:
        """Append one part atomically.

        Parameters
        ----------
        keys
            N sequence keys (:func:`sequence_key`).
        emb
            float32 (N, d) embeddings in the same order.
        """
        if len(keys) == 0:
            return
        os.makedirs(self.dir, exist_ok=True)
        cfg = os.path.join(self.dir, "config.json")
        if not os.path.exists(cfg):
            write_atomic(
                cfg, json.dumps(self.config, indent=1, sort_keys=True).encode(), unique=True
            )
        n = sum(1 for f in os.listdir(self.dir) if f.startswith("part-"))
        path = os.path.join(self.dir, f"part-{n:06d}-{uuid.uuid4().hex[:8]}.npz")
        buf = io.BytesIO()
        np.savez(buf, keys=np.asarray(keys, dtype="<U40"), emb=np.asarray(emb, np.float32))
        write_atomic(path, buf.getvalue())

    def remove(self) -> None:
        """Delete this configuration's parts (and the cache root when it becomes empty)."""
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            os.rmdir(self.root)
        except OSError:
            pass
