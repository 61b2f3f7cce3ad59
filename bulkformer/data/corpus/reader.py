"""Reading a corpus: :class:`Corpus` (a finished corpus directory) and :class:`CorpusPart`
(one shard of a sharded build, input to :func:`~bulkformer.data.corpus.merge_parts`).

The files of a corpus are described in :mod:`bulkformer.data.corpus` and
``docs/corpus_format.md``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..genes import GeneReference
from .plan import SPLIT_NAMES
from .stats import CorpusStats

FORMAT = "bulkformer-corpus"
FORMAT_VERSION = 1


# ====================================================================== reading
class _Dir:
    path: Path
    manifest: dict

    @classmethod
    def _load_manifest(cls, path, kind: str) -> tuple[Path, dict]:
        p = Path(path)
        mf = p / "manifest.json"
        if not mf.exists():
            partial = p.with_name(p.name + ".partial")
            hint = f" (an unfinished build is at {partial}; rerun it)" if partial.exists() else ""
            raise FileNotFoundError(f"{p}: no manifest.json — not a bulkformer corpus{hint}")
        m = json.loads(mf.read_text())
        if m.get("format") != FORMAT:
            raise ValueError(f"{mf}: format {m.get('format')!r}, expected {FORMAT!r}")
        if int(m.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(
                f"{mf}: format version {m['format_version']} is newer than this bulkformer "
                f"reads ({FORMAT_VERSION}); upgrade bulkformer"
            )
        if m.get("kind") != kind:
            what = (
                "a shard part (join parts with `bulkformer merge`)"
                if kind == "corpus"
                else ("a complete corpus, not a shard part")
            )
            raise ValueError(f"{p}: is {what}")
        return p, m

    def _read_samples(self, name="samples.tsv") -> pd.DataFrame:
        return pd.read_csv(
            self.path / name,
            sep="\t",
            dtype={"sample_id": str, "source": str, "label": str, "split": str},
            keep_default_na=False,
        )

    @property
    def missing(self) -> np.ndarray:
        """(n_sources, G) bool: reference genes each source lacks."""
        return np.load(self.path / "missing.npy")


class CorpusPart(_Dir):
    """One shard written by ``build_corpus(..., shard=(i, n))`` (input to :func:`merge_parts`)."""

    def __init__(self, path: Path, manifest: dict):
        self.path, self.manifest = path, manifest

    @classmethod
    def open(cls, path) -> CorpusPart:
        return cls(*cls._load_manifest(path, "part"))

    @property
    def samples(self) -> pd.DataFrame:
        return self._read_samples()

    @property
    def excluded(self) -> pd.DataFrame:
        return self._read_samples("excluded.tsv")

    def describe(self) -> str:
        s = self.manifest["shard"]
        r = self.manifest["rows"]
        return (
            f"corpus part {s['index']}/{s['count']} at {self.path}: {r['passed_qc']:,} of "
            f"{r['input']:,} samples passed QC; join all parts with `bulkformer merge`"
        )


class Corpus(_Dir):
    """A finished corpus directory (see :mod:`bulkformer.data.corpus` for the files).

    Attributes are loaded lazily; :attr:`expression` is a read-only memmap.
    """

    def __init__(self, path: Path, manifest: dict):
        self.path, self.manifest = path, manifest
        self._cache: dict = {}

    @classmethod
    def open(cls, path: str | os.PathLike) -> Corpus:
        """Open a corpus directory written by :func:`build_corpus` or :func:`merge_parts`."""
        return cls(*cls._load_manifest(path, "corpus"))

    def __len__(self) -> int:
        return int(self.manifest["rows"]["passed_qc"])

    @property
    def n_genes(self) -> int:
        return int(self.manifest["reference"]["n_genes"])

    @property
    def expression(self) -> np.ndarray:
        """(N, G) float16 z-scores, memory-mapped read-only."""
        if "expression" not in self._cache:
            p = self.path / "expression.npy"
            self._cache["expression"] = np.load(p, mmap_mode="r") if len(self) else np.load(p)
        return self._cache["expression"]

    @property
    def samples(self) -> pd.DataFrame:
        """One row per expression row: sample_id, source_index, source, source_row, [label],
        split, nonzero_genes, total_counts."""
        if "samples" not in self._cache:
            self._cache["samples"] = self._read_samples()
        return self._cache["samples"]

    @property
    def excluded(self) -> pd.DataFrame:
        return self._read_samples("excluded.tsv")

    def missing_rows(self, rows=None) -> np.ndarray:
        """(n, G) bool missing-gene mask of expression rows ``rows`` (default all)."""
        src = self.samples["source_index"].to_numpy()
        return self.missing[src if rows is None else src[rows]]

    @property
    def stats(self) -> CorpusStats:
        return CorpusStats.load(self.path / "stats.npz")

    @property
    def splits(self) -> dict[str, np.ndarray]:
        """``{"train", "val", "test"}`` → int64 row indices."""
        with np.load(self.path / "splits.npz") as z:
            return {k: z[k] for k in SPLIT_NAMES}

    @property
    def reference(self) -> GeneReference:
        ref = GeneReference.from_tsv(self.path / "genes.tsv")
        ref.check_same(self.manifest["reference"]["id"], f"corpus {self.path}")
        return ref

    def to_anndata(self, rows=None):
        """Export rows (default all; a slice, indices or a split name) as an AnnData.

        ``X`` float32 z-scores; ``obs`` = samples table (index sample_id); ``var`` = genes
        (index gene_id) with the ``mean`` and ``std`` used; ``layers["missing"]`` bool;
        ``uns["bulkformer"]`` = reference id and corpus path.
        """
        import anndata as ad

        if isinstance(rows, str):
            rows = self.splits[rows]
        elif rows is None:
            rows = slice(None)
        obs = self.samples.iloc[rows].copy()
        obs.index = pd.Index(obs.pop("sample_id").astype(str), name="sample_id")
        X = np.asarray(self.expression[rows], dtype=np.float32)
        ref = self.reference
        st = self.stats
        var = ref.to_frame().set_index("gene_id")
        var["mean"], var["std"] = st.mean, st.std
        miss = self.missing_rows(np.arange(len(self))[rows])
        return ad.AnnData(
            X=X,
            obs=obs,
            var=var,
            layers={"missing": miss},
            uns={"bulkformer": {"reference_id": ref.id, "corpus": str(self.path)}},
        )

    def describe(self) -> str:
        """A human-readable summary (what ``bulkformer corpus info`` prints)."""
        m = self.manifest
        r = m["rows"]
        p = m["parameters"]
        lines = [
            f"bulkformer corpus {self.path} (format {m['format_version']})",
            f"  samples   {r['passed_qc']:,} kept of {r['input']:,} "
            f"({r['excluded']:,} excluded: fewer than {p['min_nonzero']:,} non-zero genes"
            + (
                f"; {r['filtered_by_source']:,} more dropped by a source's filter"
                if r.get("filtered_by_source")
                else ""
            )
            + ")",
            f"  splits    train {r['train']:,} / val {r['val']:,} / test {r['test']:,} "
            f"(seed {p['seed']}" + (f", stratified by {p['label']!r})" if p["label"] else ")"),
            f"  genes     {m['reference']['n_genes']:,} (reference {m['reference']['id']})",
            "  stats     "
            + (
                f"from the training split ({self.stats.n:,} rows)"
                if p["stats"] is None
                else f"given (reference {p['stats']['reference_id']}, {p['stats']['n']:,} rows)"
            ),
            f"  matrix    expression.npy float16 {r['passed_qc']:,} × {m['reference']['n_genes']:,}"
            f" ({r['passed_qc'] * m['reference']['n_genes'] * 2 / 1e9:.2f} GB)",
        ]
        for s in m["sources"]:
            lines.append(f"  source {s['index']}  {s['type']} {s['path']} ({s['n_samples']:,})")
            lines.append(f"            {s['alignment']['report']}")
        if p["label"]:
            vc = self.samples["label"].value_counts()
            top = ", ".join(f"{k or '<none>'} {v:,}" for k, v in vc.head(8).items())
            lines.append(f"  labels    {len(vc)} classes: {top}" + (" …" if len(vc) > 8 else ""))
        b = m.get("build", {})
        if "seconds" in b:
            secs = max(float(b["seconds"]), 1e-9)
            lines.append(
                f"  built     {b.get('finished', '?')} in {secs:.1f} s "
                f"({r['input'] / secs:,.0f} samples/s)"
                + (f", resumed {b['resumed']}×" if b.get("resumed") else "")
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Corpus({str(self.path)!r}, n={len(self)}, genes={self.n_genes})"
