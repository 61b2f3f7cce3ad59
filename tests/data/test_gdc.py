"""GDC STAR-Counts reader against a pandas reference, and every kind of bad input."""

import gzip
import os

import numpy as np
import pandas as pd
import pytest
from corpus_data import LOG1P_ATOL

from bulkformer.data.engine import normalize_dense
from bulkformer.data.gdc import GDCSource
from bulkformer.data.genes import GeneReference, default_gene_lengths
from bulkformer.data.oracle import log1p_tpm_ref, qc_ref
from bulkformer.data.source import align_genes
from bulkformer.data.synthetic_gdc import N_GDC_GENES, make_gdc_dir


def pandas_counts(paths, column="unstranded"):
    """The obvious reader: pandas, drop the N_* rows."""
    out = []
    for p in paths:
        df = pd.read_csv(p, sep="\t", comment="#")
        df = df[~df["gene_id"].str.startswith("N_")]
        out.append(df[column].to_numpy(np.int64))
    return np.stack(out), df["gene_id"].to_numpy(object)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Five files in the exact GDC format with all 60,660 genes."""
    return make_gdc_dir(tmp_path_factory.mktemp("gdc_full"), 5, seed=3)


@pytest.fixture
def small(tmp_path):
    """Four small files (300 genes) to corrupt."""
    return make_gdc_dir(tmp_path / "gdc", 4, n_genes=300, seed=5)


def _edit(path, fn):
    with open(path) as f:
        lines = f.read().split("\n")
    lines = fn(lines)
    with open(path, "w") as f:
        f.write("\n".join(lines))


def _set_field(lines, row, col, value):
    parts = lines[row].split("\t")
    parts[col] = value
    lines[row] = "\t".join(parts)
    return lines


def test_format_is_gdc(full):
    d, sheet, genes, _ = full
    src = GDCSource(d, sample_sheet=sheet)
    with open(src.samples["path"].iloc[0]) as f:
        head = [next(f).rstrip("\n") for _ in range(7)]
    assert head[0] == "# gene-model: GENCODE v36"
    assert head[1].split("\t")[:4] == ["gene_id", "gene_name", "gene_type", "unstranded"]
    assert [h.split("\t")[0] for h in head[2:6]] == [
        "N_unmapped",
        "N_multimapping",
        "N_noFeature",
        "N_ambiguous",
    ]
    assert len(src.gene_ids) == N_GDC_GENES and src.gene_model == "GENCODE v36"
    assert sum(g.endswith("_PAR_Y") for g in src.gene_ids) == 44


def test_counts_match_pandas(full):
    d, sheet, _, _ = full
    src = GDCSource(d, sample_sheet=sheet, threads=2)
    ref, ids = pandas_counts(src.samples["path"])
    np.testing.assert_array_equal(src.read_counts(), ref)
    np.testing.assert_array_equal(src.gene_ids, ids)
    np.testing.assert_array_equal(src.read_counts([3, 1], threads=1), ref[[3, 1]])
    spec = src.read_counts(special=True)
    assert spec.shape == (5, 4) and (spec[:, 0] == 2338730).all()


def test_read_block_equals_reference(full):
    d, sheet, _, _ = full
    src = GDCSource(d, sample_sheet=sheet)
    ref = GeneReference.default()
    al = src.align(ref)
    # GDC files carry every reference gene (both are GENCODE v36): all matched, and the genes
    # without a known length get the 1 kb fallback
    assert al.n_matched == len(ref)
    assert al.n_fallback_length == int((~np.isfinite(ref.lengths)).sum())
    strict = align_genes(
        src.gene_ids, ref, default_lengths=default_gene_lengths(), fallback_length=None
    )
    assert strict.n_matched == int(np.isfinite(ref.lengths).sum())
    counts, ids = pandas_counts(src.samples["path"])
    al2 = align_genes(ids, ref, default_lengths=default_gene_lengths())
    np.testing.assert_array_equal(al.gene_map, al2.gene_map)
    want = log1p_tpm_ref(counts, al2.lengths, al2.gene_map, len(ref))
    rows = np.array([4, 0, 2])
    blk = src.read_block(rows, al)
    assert blk.values.dtype == np.float32 and blk.values.shape == (3, len(ref))
    # the engine's float32 arithmetic (the ARCHS4 reader's), within its bound of the reference
    np.testing.assert_allclose(blk.values, want[rows], rtol=0, atol=LOG1P_ATOL)
    nz, tot = qc_ref(counts[rows])
    np.testing.assert_array_equal(blk.nonzero, nz)
    np.testing.assert_array_equal(blk.total, tot)
    assert (blk.values[:, ~al.covered] == 0).all()


def test_dense_normalization_with_duplicates_matches_reference(rng):
    ref = GeneReference(
        np.array(["G0", "G1", "G2"], dtype=object),
        np.array(["a", "b", "c"], dtype=object),
        np.array([1000.0, 2000.0, np.nan]),
    )
    ids = ["G1", "G0", "X", "G1", "G2"]  # G1 twice: summed
    al = align_genes(ids, ref, source_lengths=np.array([500.0, 1500.0, 800.0, 700.0, np.nan]))
    counts = rng.integers(0, 1000, (3, 5))
    counts[1] = 0  # an all-zero sample
    want = log1p_tpm_ref(counts, al.lengths, al.gene_map, 3)
    got, nz, tot = normalize_dense(counts, al.gene_map, al.lengths, 3)
    np.testing.assert_allclose(got, want, rtol=0, atol=LOG1P_ATOL)
    assert (got[1] == 0).all()  # an all-zero sample: zeros, never NaN
    np.testing.assert_array_equal(nz, (counts != 0).sum(1))
    np.testing.assert_array_equal(tot, counts.sum(1))


def test_labels_from_sample_sheet(full):
    d, sheet, _, _ = full
    src = GDCSource(d, sample_sheet=sheet)
    s = src.samples
    sh = pd.read_csv(sheet, sep="\t").set_index("File Name")
    assert s.index.name == "sample_id" and s.index.is_unique
    assert list(s.index) == sh.loc[s["file_name"], "Sample ID"].tolist()
    assert list(s["cancer_type"]) == sh.loc[s["file_name"], "Project ID"].tolist()
    assert set(s["sample_type"]) <= {"Primary Tumor", "Solid Tissue Normal"}
    assert {"file_id", "case_id", "path"} <= set(s.columns)


def test_no_sheet_gz_and_stranded(tmp_path):
    d, _, _, counts = make_gdc_dir(tmp_path / "g", 3, n_genes=200, gz=True, seed=9)
    os.remove(os.path.join(d, "gdc_sample_sheet.tsv"))
    src = GDCSource(d, counts_column="stranded_first")
    assert all(i.count("-") == 4 for i in src.samples.index)  # file-name stems (UUIDs)
    paths = list(src.samples["path"])
    with gzip.open(paths[0], "rt") as f:
        assert f.readline().startswith("# gene-model")
    got = src.read_counts()
    ref = np.stack(
        [pd.read_csv(p, sep="\t", comment="#").iloc[4:]["stranded_first"].to_numpy() for p in paths]
    )
    np.testing.assert_array_equal(got, ref)


def test_no_trailing_newline_and_big_counts(small):
    d, sheet, _, _ = small
    src0 = GDCSource(d, sample_sheet=sheet)
    p = src0.samples["path"].iloc[1]
    _edit(p, lambda ls: _set_field(ls, 10, 3, "123456789012345")[:-1])  # drop final "\n"
    got = GDCSource(d, sample_sheet=sheet).read_counts([1])[0]
    assert got[10 - 6] == 123456789012345
    want = pd.read_csv(p, sep="\t", comment="#").iloc[4:]["unstranded"].to_numpy()
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "value, what",
    [("1.5", "'1.5'"), ("-3", "'-3'"), ("NaN", "'NaN'"), ("", "''"), ("1e5", "'1e5'")],
)
def test_bad_count_values(small, value, what):
    d, sheet, _, _ = small
    src = GDCSource(d, sample_sheet=sheet)
    p = src.samples["path"].iloc[2]
    gid = src.gene_ids[7]
    _edit(p, lambda ls: _set_field(ls, 2 + 4 + 7, 3, value))
    with pytest.raises(ValueError) as e:
        src.read_counts()
    msg = str(e.value)
    assert os.path.basename(p) in msg and "unstranded" in msg and gid in msg and what in msg


def test_bad_count_in_first_file(small):
    d, sheet, _, _ = small
    src = GDCSource(d, sample_sheet=sheet)
    p = src.samples["path"].iloc[0]
    _edit(p, lambda ls: _set_field(ls, 20, 3, "nan"))
    with pytest.raises(ValueError, match="expected a non-negative integer"):
        GDCSource(d, sample_sheet=sheet).read_block([0], src.align())


def test_missing_column(small):
    d, sheet, _, _ = small
    src = GDCSource(d, sample_sheet=sheet)
    p0 = src.samples["path"].iloc[0]
    _edit(p0, lambda ls: [ls[0], ls[1].replace("unstranded", "counts", 1), *ls[2:]])
    with pytest.raises(ValueError, match=r"header lacks the counts column 'unstranded'") as e:
        GDCSource(d, sample_sheet=sheet)
    assert os.path.basename(p0) in str(e.value)


def test_other_file_header_differs(small):
    d, sheet, _, _ = small
    src = GDCSource(d, sample_sheet=sheet)
    p = src.samples["path"].iloc[3]
    _edit(p, lambda ls: [ls[0], ls[1].replace("unstranded", "x", 1), *ls[2:]])
    with pytest.raises(ValueError, match="header lacks the counts column") as e:
        src.read_counts()
    assert os.path.basename(p) in str(e.value)


def test_gene_list_differs(small):
    d, sheet, _, _ = small
    src = GDCSource(d, sample_sheet=sheet)
    p = src.samples["path"].iloc[1]
    a, b = 6 + 10, 6 + 11
    _edit(p, lambda ls: ls[:a] + [ls[b], ls[a]] + ls[b + 1 :])  # two genes swapped
    with pytest.raises(ValueError, match="gene list differs") as e:
        src.read_counts()
    assert os.path.basename(p) in str(e.value) and src.gene_ids[11] in str(e.value)


def test_gene_missing_row(small):
    d, sheet, _, _ = small
    src = GDCSource(d, sample_sheet=sheet)
    p = src.samples["path"].iloc[1]
    _edit(p, lambda ls: ls[:50] + ls[51:])
    with pytest.raises(ValueError, match="data rows, expected 304"):
        src.read_counts()


def test_version_change_is_a_different_gene_list(small):
    d, sheet, _, _ = small
    src = GDCSource(d, sample_sheet=sheet)
    p = src.samples["path"].iloc[2]
    gid = src.gene_ids[30]
    _edit(p, lambda ls: _set_field(ls, 6 + 30, 0, gid + "9"))
    with pytest.raises(ValueError, match="gene list differs"):
        src.read_counts()


def test_missing_field(small):
    d, sheet, _, _ = small
    src = GDCSource(d, sample_sheet=sheet)
    p = src.samples["path"].iloc[2]
    _edit(p, lambda ls: [*ls[:40], "\t".join(ls[40].split("\t")[:-1]), *ls[41:]])
    with pytest.raises(ValueError, match="missing or extra fields"):
        src.read_counts()


def test_sheet_lacks_file(small):
    d, sheet, _, _ = small
    sh = pd.read_csv(sheet, sep="\t")
    gone = sh["File Name"].iloc[2]
    sh.drop(index=2).to_csv(sheet, sep="\t", index=False)
    with pytest.raises(ValueError, match="sample sheet lacks 1 file") as e:
        GDCSource(d, sample_sheet=sheet)
    assert gone in str(e.value)


def test_sheet_row_without_file_is_dropped(small, caplog):
    d, sheet, _, _ = small
    sh = pd.read_csv(sheet, sep="\t")
    extra = sh.iloc[[0]].assign(**{"File Name": "gone.tsv", "Sample ID": "TCGA-X"})
    pd.concat([sh, extra]).to_csv(sheet, sep="\t", index=False)
    src = GDCSource(d, sample_sheet=sheet)
    assert src.n_samples == 4 and "have no file" in caplog.text


def test_duplicate_sample_ids(small):
    d, sheet, _, _ = small
    sh = pd.read_csv(sheet, sep="\t")
    sh.loc[1, "Sample ID"] = sh.loc[0, "Sample ID"]
    sh.to_csv(sheet, sep="\t", index=False)
    with pytest.raises(ValueError, match="Sample ID not unique") as e:
        GDCSource(d, sample_sheet=sheet)
    assert sh.loc[0, "Sample ID"] in str(e.value)


def test_sheet_missing_column(small):
    d, sheet, _, _ = small
    pd.read_csv(sheet, sep="\t").drop(columns=["Project ID"]).to_csv(sheet, sep="\t", index=False)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['Project ID'\]"):
        GDCSource(d, sample_sheet=sheet)


def test_bad_arguments(tmp_path, small):
    with pytest.raises(ValueError, match="not a GDC counts column"):
        GDCSource(small[0], counts_column="tpm_unstranded")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .*augmented_star_gene_counts"):
        GDCSource(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        GDCSource(tmp_path / "nope")
    src = GDCSource(small[0])
    ref = GeneReference.default()
    wrong = align_genes(["ENSG00000141510"], ref)
    with pytest.raises(ValueError, match="alignment is for 1 source genes"):
        src.read_block([0], wrong)
