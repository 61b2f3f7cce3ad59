"""Corpus statistics: :class:`CorpusStats` (the per-gene μ/σ every z-score uses), the one
accumulation step :func:`fold`, and the input fingerprints a build records."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np

from ..._io import npz_bytes
from ..normalize import GeneStats
from ..source import ExpressionSource

_MiB = 1 << 20


# ====================================================================== fingerprints
def file_fingerprint(path: str | os.PathLike) -> dict:
    """Cheap identity of an input file or directory, recorded in the manifest.

    A file: size, mtime (ns) and the SHA-256 of its first and last MiB. A directory: the number
    of files, their total size and the SHA-256 of the sorted list of (relative path, size,
    mtime). Enough to refuse resuming a build whose inputs changed; not a content hash.
    """
    p = Path(path)
    if p.is_file():
        st = p.stat()
        h = hashlib.sha256()
        with open(p, "rb") as f:
            h.update(f.read(_MiB))
            if st.st_size > 2 * _MiB:
                f.seek(st.st_size - _MiB)
                h.update(f.read(_MiB))
            elif st.st_size > _MiB:
                h.update(f.read())
        return {
            "kind": "file",
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "sha256_head_tail": h.hexdigest(),
        }
    if p.is_dir():
        h = hashlib.sha256()
        n = total = 0
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            st = f.stat()
            n, total = n + 1, total + st.st_size
            h.update(f"{f.relative_to(p)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        return {"kind": "directory", "files": n, "size": total, "sha256_listing": h.hexdigest()}
    return {"kind": "unknown"}


def source_fingerprint(source: ExpressionSource) -> dict:
    fp = getattr(source, "fingerprint", None)
    if callable(fp):
        return fp()
    return file_fingerprint(source.path)


# ====================================================================== statistics
@dataclasses.dataclass(frozen=True)
class CorpusStats:
    """Per-gene standardization statistics of log1p(TPM) (the corpus' "tokenizer").

    mean, std : (G,) float64, population std; std = 0 → z = 0.
    count : (G,) float64, training rows that had the gene (missing genes are not counted).
    reference_id : the gene reference the columns follow.
    n : training rows used.
    """

    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray
    reference_id: str
    n: int

    @classmethod
    def from_gene_stats(cls, st: GeneStats, reference_id: str, n: int) -> CorpusStats:
        return cls(st.mean, st.std, st.count.copy(), reference_id, int(n))

    @classmethod
    def load(cls, path: str | os.PathLike) -> CorpusStats:
        """Read ``stats.npz`` (or the one inside a corpus directory)."""
        p = Path(path)
        if p.is_dir():
            p = p / "stats.npz"
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such statistics file (a corpus' stats.npz)")
        expected = (
            "expected a corpus stats.npz: an .npz of arrays mean and std (G,) float, "
            "reference_id (a string) and optionally count (G,) and n"
        )
        try:
            z = np.load(p, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not an .npz")
            with z:
                missing = {"mean", "std", "reference_id"} - set(z.files)
                if missing:
                    raise ValueError(f"lacks {sorted(missing)}")
                arrays = {k: z[k] for k in ("mean", "std", "count", "reference_id", "n") if k in z}
        except FileNotFoundError:
            raise
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
            text = str(e).split("\n")[0]
            why = "unreadable (not an .npz, or corrupt)" if "pickle" in text else text
            raise ValueError(f"{p}: {why}; {expected}") from None
        G = arrays["mean"].shape[0] if arrays["mean"].ndim == 1 else -1
        for k in ("mean", "std", "count"):
            a = arrays.get(k)
            if a is not None and (a.shape != (G,) or a.dtype.kind not in "fiu"):
                raise ValueError(f"{p}: field {k!r} is {a.dtype} of shape {a.shape}; {expected}")
        rid = arrays["reference_id"]
        if rid.shape != () or rid.dtype.kind != "U":
            raise ValueError(f"{p}: field 'reference_id' is not a string; {expected}")
        n = arrays.get("n")
        if n is not None and (n.shape != () or n.dtype.kind not in "iu"):
            raise ValueError(f"{p}: field 'n' is not an integer; {expected}")
        return cls(
            arrays["mean"].astype(np.float64),
            arrays["std"].astype(np.float64),
            arrays["count"].astype(np.float64) if "count" in arrays else np.zeros(G),
            str(rid),
            int(n) if n is not None else 0,
        )

    def to_bytes(self) -> bytes:
        return npz_bytes(
            mean=self.mean,
            std=self.std,
            count=self.count,
            reference_id=np.array(self.reference_id),
            n=np.array(self.n, dtype=np.int64),
        )


def fold(
    stats: GeneStats | None,
    values: np.ndarray,
    covered: np.ndarray,
    rows: np.ndarray | None = None,
) -> int:
    """Merge the statistics of ``values`` (n, G) over the ``covered`` columns (and only the
    ``rows`` marked true, when given: no copy of the block) into ``stats``.

    Every row of ``values`` (selected or not) is checked for NaN/inf in the same pass; the
    index of the first bad row is returned (and nothing is merged), -1 when all are finite.
    ``stats=None`` only checks.

    The single place where training statistics are accumulated, so that a single build and a
    merge of shards (which call it on the same blocks in the same order) agree bit for bit.
    """
    from ... import _C

    values = np.ascontiguousarray(values, dtype=np.float32)
    if stats is None:
        rows = np.zeros(len(values), dtype=np.uint8)
    elif rows is not None:
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
    mean, m2, bad = _C.block_moments(values, rows)
    n = len(values) if rows is None else int(np.count_nonzero(rows))
    if bad >= 0 or n == 0:
        return int(bad)
    part = GeneStats(len(covered))
    part.count[covered] = n
    part.mean_[covered] = mean[covered]
    part.m2[covered] = m2[covered]
    stats.merge(part)
    return -1


def stats_sha(stats: CorpusStats) -> str:
    return hashlib.sha256(stats.to_bytes()).hexdigest()[:16]
