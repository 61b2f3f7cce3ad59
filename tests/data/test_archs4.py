"""ARCHS4 reader: layouts and field-name variants, metadata, search, selection, QC, reads."""

import bulkformer._C  # noqa: E402,F401  (the engine must be built: a missing build fails)
import h5py
import numpy as np
import pandas as pd
import pytest

from bulkformer.data.archs4 import ARCHS4File, ARCHS4FormatError, ARCHS4Source
from bulkformer.data.genes import GeneReference
from bulkformer.data.oracle import log1p_tpm_ref, qc_ref
from bulkformer.data.source import align_genes
from bulkformer.data.synthetic import make_archs4

NG, NS = 1203, 157


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    p = tmp_path_factory.mktemp("a4") / "human_gene_v2.2.h5"
    make_archs4(p, NG, NS, chunks=(400, 16), shuffle=True, seed=3)
    return str(p)


def _counts(path):
    with h5py.File(path) as f:
        d = f["data/expression"][:]
    return d if d.shape[0] == NG else d.T


def test_describe_and_metadata(v2):
    with ARCHS4File(v2) as f:
        d = f.describe()
        assert d["version"] == "2.2"
        assert d["shape"] == (NG, NS) and d["layout"] == "genes × samples"
        assert d["chunks"] == (400, 16)
        assert d["filters"] == ["shuffle", "deflate"]
        assert d["fast_path"].startswith("yes")
        assert f.gene_ids[0] == "ENSG00000000000" and len(f.gene_ids) == NG
        df = f.samples(["title", "series_id"], rows=[2, 0])
        assert list(df.index) == ["GSM1000002", "GSM1000000"]
        assert df["title"].iloc[0].endswith("sample 2")
        with pytest.raises(KeyError, match="no sample field 'nope'.*available"):
            f.sample_field("nope")


def test_field_name_variants_and_old_transposed_layout(tmp_path, v2):
    old = tmp_path / "old.h5"
    make_archs4(
        old,
        NG,
        NS,
        chunks=(400, 16),
        shuffle=True,
        seed=3,
        transposed=True,
        id_field="ensembl_gene",
        aligned_field="alignedreads",
        version="1.0",
    )
    with ARCHS4File(old) as f, ARCHS4File(v2) as g:
        assert f.transposed and not g.transposed
        assert f.describe()["layout"].startswith("samples × genes")
        np.testing.assert_array_equal(f.gene_ids, g.gene_ids)  # ensembl_gene variant
        np.testing.assert_array_equal(
            f.sample_field("readsaligned"), g.sample_field("readsaligned")
        )  # alignedreads variant
        idx = np.array([5, 0, 156, 77])
        np.testing.assert_array_equal(f.read(idx), g.read(idx))
        np.testing.assert_array_equal(f.read(idx), _counts(v2)[:, idx].T)


def test_old_meta_sample_fields(tmp_path):
    p = tmp_path / "v1.h5"
    c = np.random.default_rng(0).integers(0, 9, (30, 12)).astype(np.uint32)
    with h5py.File(p, "w") as f:
        f.create_dataset("data/expression", data=c, chunks=(10, 4), compression="gzip")
        f.create_dataset(
            "meta/genes",
            data=np.array([f"G{i}".encode() for i in range(30)]),
            dtype=h5py.string_dtype(),
        )
        f.create_dataset(
            "meta/Sample_geo_accession",
            data=np.array([f"GSM{i}".encode() for i in range(12)]),
            dtype=h5py.string_dtype(),
        )
        f.create_dataset(
            "meta/Sample_title",
            data=np.array([b"liver x"] * 6 + [b"brain"] * 6),
            dtype=h5py.string_dtype(),
        )
    with ARCHS4File(p) as f:
        assert not f.has_ensembl_ids
        assert f.gene_ids[3] == "G3"  # symbols stand in for IDs
        assert f.sample_ids[2] == "GSM2"
        np.testing.assert_array_equal(f.search("LIVER", fields=["title"]), np.arange(6))
        np.testing.assert_array_equal(f.read([1, 4]), c[:, [1, 4]].T)


def test_search_matches_pandas_oracle(v2):
    with ARCHS4File(v2) as f:
        for pat, fields in [
            ("liver|brain", ("title",)),
            (r"age: 2\d", ("characteristics_ch1",)),
            ("^human k", ("source_name_ch1",)),
            ("LUNG", ("title", "source_name_ch1")),
        ]:
            want = np.zeros(NS, bool)
            for fld in fields:
                want |= pd.Series(f.sample_field(fld)).str.contains(pat, case=False, regex=True)
            np.testing.assert_array_equal(f.search(pat, fields=fields), np.flatnonzero(want))
        assert len(f.search("zzz-no-match")) == 0
        with pytest.raises(ValueError, match="invalid search pattern"):
            f.search("(")


def test_select(v2):
    with ARCHS4File(v2) as f:
        assert f.select(gsm=["GSM1000009", "GSM1000001"]).tolist() == [1, 9]
        ser = f.sample_field("series_id")
        s0 = ser[0]
        np.testing.assert_array_equal(f.select(series=[s0]), np.flatnonzero(ser == s0))
        assert f.select(index=[3, 1], gsm=["GSM1000001"]).tolist() == [1, 3]
        with pytest.raises(KeyError, match="not found"):
            f.select(gsm=["GSM0"])
        with pytest.raises(IndexError):
            f.select(index=[NS])


def test_qc_and_filter_match_numpy(v2):
    counts = _counts(v2)
    nz, tot = qc_ref(counts.T)
    with ARCHS4File(v2) as f:
        q = f.qc()
        np.testing.assert_array_equal(q["nonzero_genes"], nz)
        np.testing.assert_array_equal(q["total_counts"], tot)
        scp = f.sample_field("singlecellprobability")
        thr = int(np.median(nz))
        want = np.flatnonzero((nz >= thr) & (scp < 0.5))
        np.testing.assert_array_equal(f.filter(min_nonzero=thr), want)
        sub = np.arange(0, NS, 2)
        np.testing.assert_array_equal(f.filter(sub, min_nonzero=thr), np.intersect1d(want, sub))


def test_source_read_block_vs_reference(v2):
    counts = _counts(v2)
    rng = np.random.default_rng(0)
    with ARCHS4File(v2) as f:
        ids = f.gene_ids
    pick = rng.permutation(NG)[:500]
    ref = GeneReference(
        np.concatenate([ids[pick], ["ENSG99999999999"]]),
        np.array([""] * 501, dtype=object),
        np.concatenate([rng.uniform(300, 5000, 500), [1000.0]]),
    )
    al = align_genes(ids, ref, default_lengths=pd.Series(rng.uniform(300, 5000, NG), index=ids))
    assert al.n_matched == 500 and al.n_unused == NG - 500
    assert "matched 500 / 501 reference genes" in al.report()
    src = ARCHS4Source(v2, samples=np.arange(10, 60))
    assert src.n_samples == 50 and src.samples.index[0] == "GSM1000010"
    rows = np.array([3, 0, 49])
    blk = src.read_block(rows, al)
    want = log1p_tpm_ref(counts[:, 10 + rows].T, al.lengths, al.gene_map, len(ref))
    np.testing.assert_allclose(blk.values, want, rtol=2e-6, atol=2e-6)
    assert (blk.values[:, -1] == 0).all()  # the reference gene the file lacks
    np.testing.assert_array_equal(blk.nonzero, qc_ref(counts[:, 10 + rows].T)[0])


def test_format_errors(tmp_path):
    p = tmp_path / "empty.h5"
    with h5py.File(p, "w") as f:
        f.create_group("meta")
    with pytest.raises(ARCHS4FormatError, match=r"empty\.h5: no dataset 'data/expression'"):
        ARCHS4File(p)
    p2 = tmp_path / "mismatch.h5"
    make_archs4(p2, 50, 20, chunks=(10, 5))
    with h5py.File(p2, "a") as f:
        del f["meta/genes/symbol"], f["meta/genes/biotype"]
        del f["meta/genes/ensembl_gene_id"]
        f["meta/genes/ensembl_gene_id"] = np.array([b"ENSG1"] * 49, dtype=object)
    with pytest.raises(ARCHS4FormatError, match=r"is 50 × 20 but meta/genes has 49 entries"):
        ARCHS4File(p2)
    p3 = tmp_path / "notes.txt"
    p3.write_text("hello")
    with pytest.raises(ARCHS4FormatError, match="not a readable HDF5 file"):
        ARCHS4File(p3)
    with pytest.raises(FileNotFoundError):
        ARCHS4File(tmp_path / "nope.h5")


def test_cli_info_search_qc(v2, tmp_path, capsys):
    from bulkformer.cli import main

    assert main(["archs4", "info", v2]) == 0
    assert "genes × samples" in capsys.readouterr().out
    assert main(["archs4", "search", v2, "^liver", "--field", "title"]) == 0
    with ARCHS4File(v2) as f:
        n = len(f.search("^liver", fields=["title"]))
    assert capsys.readouterr().out.startswith(f"{n:,} of {NS:,} samples match")
    out = tmp_path / "qc.tsv"
    assert main(["archs4", "qc", v2, "--min-nonzero", "1", "--out", str(out)]) == 0
    q = pd.read_csv(out, sep="\t", index_col=0)
    np.testing.assert_array_equal(q["nonzero_genes"], qc_ref(_counts(v2).T)[0])
    assert main(["archs4", "info", str(tmp_path / "missing.h5")]) == 1


# ---------------------------------------------------------------------------- block alignment
@pytest.mark.parametrize(
    "column,bs,want",
    [
        (np.arange(61) // 7, 10, [0, 7, 14, 21, 28, 35, 42, 49, 56, 61]),  # one chunk per block
        (np.arange(100) // 3, 10, [0, 9, 18, 27, 36, 45, 54, 63, 72, 81, 90, 100]),  # 3 runs
        (np.arange(3000) // 1000, 512, [0, 1000, 2000, 3000]),  # wide runs stay whole
        (np.zeros(5000, int), 512, [0, 1666, 3333, 5000]),  # beyond 4 × block_size: split
        (np.array([0, 0, 3, 3, 3] + [9] * 12 + [12]), 4, [0, 2, 5, 17, 18]),
        (np.array([5, 5, 1, 1, 5, 5]), 3, [0, 2, 4, 6]),  # unsorted selection: runs in order
        (np.zeros(0, int), 8, [0]),
    ],
)
def test_chunk_aligned_cuts(column, bs, want):
    from bulkformer.data.archs4 import chunk_aligned_cuts

    cuts = chunk_aligned_cuts(column, bs)
    assert cuts.tolist() == want
    for a, b in zip(cuts[:-1], cuts[1:]):  # a block never ends inside a run it could hold
        assert b - a <= max(bs, 4 * bs) and (
            b == len(column) or column[b - 1] != column[b] or b - a > bs
        )


def test_corpus_blocks_follow_chunk_columns(tmp_path, v2):
    """A corpus build reads whole chunk columns per block (each chunk inflated once), and the
    corpus is the one the plain every-block_size blocks give (up to the statistics' summation
    order)."""
    from bulkformer.data import corpus as corpus_mod
    from bulkformer.data.source import ExpressionSource

    with ARCHS4File(v2) as f:
        ref = GeneReference(
            f.gene_ids[::2], f.gene_symbols[::2], np.full(len(f.gene_ids[::2]), 1e3)
        )
    src = ARCHS4Source(v2, samples=np.r_[0:40, 45:157], max_singlecell=None)
    cuts = src.block_cuts(20)  # chunk width 16: runs of 16 (and 11 + 5 around the gap)
    col = src.rows // 16
    assert all(col[b - 1] != col[b] for b in cuts[1:-1])
    calls = []
    read = ARCHS4Source.read_block

    def counting(self, rows, alignment, *, threads=None):
        calls.append(np.unique(self.rows[rows] // 16))
        return read(self, rows, alignment, threads=threads)

    kw = dict(min_nonzero=0, block_size=20, progress=False)
    orig = ARCHS4Source.read_block
    ARCHS4Source.read_block = counting
    try:
        a = corpus_mod.build_corpus(src, tmp_path / "aligned", ref, **kw)
    finally:
        ARCHS4Source.read_block = orig
    seen = np.concatenate(calls)
    assert len(seen) == len(np.unique(seen))  # no chunk column read by two blocks
    plain = ARCHS4Source(v2, samples=np.r_[0:40, 45:157], max_singlecell=None)
    plain.block_cuts = lambda bs: ExpressionSource.block_cuts(plain, bs)
    b = corpus_mod.build_corpus(plain, tmp_path / "plain", ref, **kw)
    pd.testing.assert_frame_equal(a.samples, b.samples)
    np.testing.assert_allclose(a.stats.mean, b.stats.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        a.expression.astype(np.float32), b.expression.astype(np.float32), atol=2e-3
    )
