"""Hostile-but-realistic inputs (issue: trust): each was a traceback, a silent wrong result or
an unnamed error before; each must now be a correct result or one clear line naming the file."""

from __future__ import annotations

import fcntl
import gzip
import os
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
from corpus_data import make_reference

from bulkformer.cli import main as cli_main
from bulkformer.data.archs4 import ARCHS4File, ARCHS4FormatError, ARCHS4Source
from bulkformer.data.corpus import Corpus, build_corpus
from bulkformer.data.engine import EngineError
from bulkformer.data.synthetic import make_archs4


def _ref_tsv(tmp_path, G):
    ref = make_reference(G)
    path = tmp_path / "ref.tsv"
    ref.to_tsv(path)
    return ref, str(path)


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("bulkformer ")]
    assert len(lines) == 1, err
    return lines[0]


# --------------------------------------------------------------------- orientation (defect 4)
def test_square_samples_by_genes_is_refused_then_read_when_stated(tmp_path, capsys):
    n = 60
    sg = make_archs4(tmp_path / "sg.h5", n, n, chunks=(20, 10), transposed=True, seed=3)
    gs = make_archs4(tmp_path / "gs.h5", n, n, chunks=(20, 10), seed=3)  # same counts
    with pytest.raises(ARCHS4FormatError, match=r"sg\.h5: .*60 × 60.*ambiguous"):
        ARCHS4File(sg)
    with pytest.raises(ARCHS4FormatError, match=r"gs\.h5: .*ambiguous"):  # square either way
        ARCHS4File(gs)
    with (
        ARCHS4File(sg, layout="samples-by-genes") as f,
        ARCHS4File(gs, layout="genes-by-samples") as g,
    ):
        assert f.transposed and not g.transposed
        np.testing.assert_array_equal(f.read(np.arange(n)), g.read(np.arange(n)))
    with pytest.raises(ARCHS4FormatError, match=r"not genes-by-samples"):
        ARCHS4File(make_archs4(tmp_path / "r.h5", 60, 40, chunks=(20, 10), transposed=True),
                   layout="genes-by-samples")  # fmt: skip
    _, ref = _ref_tsv(tmp_path, n)
    base = ["--reference", ref, "--min-nonzero", "1", "--no-progress"]
    assert cli_main(["preprocess", "--archs4", sg, *base, "--out", str(tmp_path / "c")]) == 1
    assert "ambiguous" in _err(capsys) and not (tmp_path / "c").exists()
    args = ["preprocess", "--archs4", sg, "--archs4-layout", "samples-by-genes", *base]
    assert cli_main([*args, "--out", str(tmp_path / "c")]) == 0
    args = ["preprocess", "--archs4", gs, "--archs4-layout", "genes-by-samples", *base]
    assert cli_main([*args, "--out", str(tmp_path / "d")]) == 0
    a = np.load(tmp_path / "c" / "expression.npy")
    b = np.load(tmp_path / "d" / "expression.npy")
    np.testing.assert_array_equal(a, b)


def test_sample_ids_decide_orientation_when_genes_match_both(tmp_path):
    """60 genes; a 60 × 40 samples × genes file is not square: only one reading fits."""
    p = make_archs4(tmp_path / "t.h5", 40, 60, chunks=(20, 10), transposed=True)
    with ARCHS4File(p) as f:
        assert f.transposed and f.n_samples == 60 and f.n_genes == 40


# --------------------------------------------------------------------- metadata (defect 8)
def test_short_sample_field_fails_at_open_naming_it(tmp_path, capsys):
    p = make_archs4(tmp_path / "s.h5", 50, 30, chunks=(10, 10))
    with h5py.File(p, "a") as f:
        t = f["meta/samples/title"][:-1]
        del f["meta/samples/title"]
        f.create_dataset("meta/samples/title", data=t, dtype=h5py.string_dtype())
    with pytest.raises(ARCHS4FormatError, match=r"s\.h5: meta/samples fields differ in length: "
                       r"meta/samples/title has 29 entries, the others 30"):  # fmt: skip
        ARCHS4File(p)
    _, ref = _ref_tsv(tmp_path, 50)
    rc = cli_main(["preprocess", "--archs4", p, "--reference", ref, "--out", str(tmp_path / "c")])
    assert rc == 1 and "meta/samples/title has 29" in _err(capsys)


def test_unknown_gsm_and_field_are_one_line(tmp_path, capsys):
    p = make_archs4(tmp_path / "s.h5", 50, 30, chunks=(10, 10))
    _, ref = _ref_tsv(tmp_path, 50)
    base = ["preprocess", "--archs4", p, "--reference", ref, "--out", str(tmp_path / "c")]
    assert cli_main([*base, "--samples", "GSM1000001", "GSM9"]) == 1
    line = _err(capsys)
    assert "s.h5: 1 of 2 GSM id(s) not found" in line and "GSM9" in line
    assert cli_main([*base, "--search", "liver", "--search-field", "nope"]) == 1
    assert "s.h5: no sample field 'nope' in meta/samples" in _err(capsys)
    with ARCHS4File(p) as f, pytest.raises(KeyError):  # still a KeyError for API callers
        f.sample_field("nope")


def test_corrupt_chunk_is_bad_input_not_resumable(tmp_path, capsys, caplog):
    p = make_archs4(tmp_path / "bad.h5", 50, 40, chunks=(25, 10))
    with h5py.File(p) as f:
        ci = f["data/expression"].id.get_chunk_info(3)
    with open(p, "r+b") as fh:
        fh.seek(ci.byte_offset + 5)
        fh.write(b"\xff" * 40)
    _, ref = _ref_tsv(tmp_path, 50)
    args = ["preprocess", "--archs4", p, "--reference", ref, "--min-nonzero", "1",
            "--no-progress", "--out", str(tmp_path / "c")]  # fmt: skip
    for _ in range(2):  # the rerun meets the same bytes: same message, never "resume"
        assert cli_main(args) == 1
        line = _err(capsys)
        assert "bad.h5" in line and "damaged" in line and "resume" not in line
        assert "resume" not in caplog.text
        assert not (tmp_path / "c.partial").exists() and not (tmp_path / "c").exists()
    with ARCHS4File(p) as f, pytest.raises(EngineError):
        f.read(np.arange(40))


def test_internal_error_is_one_line_and_debug_shows_traceback(tmp_path, capsys, monkeypatch):
    from bulkformer.data import cli_corpus

    def boom(args):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(cli_corpus, "run_info", boom)
    assert cli_main(["corpus", "info", str(tmp_path)]) == 70
    line = _err(capsys)
    assert "internal error: TypeError: unsupported operand" in line and "--debug" in line
    assert cli_main(["--debug", "corpus", "info", str(tmp_path)]) == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "internal error: TypeError" in err


def test_bare_keyerror_and_index_error_are_one_line(capsys, monkeypatch, tmp_path):
    from bulkformer.data import cli_corpus

    for exc, want in ((KeyError("label"), "no entry 'label'"), (IndexError("list index"), "list")):

        def boom(args, exc=exc):
            raise exc

        monkeypatch.setattr(cli_corpus, "run_info", boom)
        assert cli_main(["corpus", "info", str(tmp_path)]) == 1
        assert want in _err(capsys)


def test_damaged_safetensors_is_named(tmp_path):
    torch = pytest.importorskip("torch")
    from bulkformer.data.corpus import CorpusStats
    from bulkformer.model import BulkFormer, BulkFormerConfig
    from bulkformer.model.pretrained import export_pretrained, load_pretrained

    ref = make_reference(16)
    cfg = BulkFormerConfig(n_genes=16, d_esm=8, d_model=16, n_heads=2, n_layers=1,
                           context_hidden=8, reference_id=ref.id)  # fmt: skip
    model = BulkFormer(cfg, esm=torch.zeros(16, 8))
    stats = CorpusStats(np.zeros(16), np.ones(16), np.ones(16), ref.id, 1)
    d = export_pretrained(model, ref, stats, tmp_path / "pt")
    w = d / "model.safetensors"
    w.write_bytes(b"\x07\x00\x00\x00\x00\x00\x00\x00{bad}" + w.read_bytes()[15:])
    with pytest.raises(
        ValueError, match=r"pt/model\.safetensors: (not a readable safetensors|corrupt or modified)"
    ):
        load_pretrained(d)


# --------------------------------------------------------------------- numbers (defect 9)
def test_negative_threads_refused(tmp_path, capsys):
    p = make_archs4(tmp_path / "s.h5", 50, 30, chunks=(10, 10))
    with pytest.raises(SystemExit):
        cli_main(["preprocess", "--archs4", p, "--threads", "-3", "--out", str(tmp_path / "c")])
    assert "--threads: -3 is below 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["archs4", "qc", p, "--threads", "-1"])
    with ARCHS4File(p) as f, pytest.raises(ValueError, match="threads=-3: expected an integer"):
        f.read(np.arange(3), threads=-3)


def test_fractional_counts_refused_in_every_reader(tmp_path):
    """One rule: counts are integers within 1e-3, in float ARCHS4 files as in .h5ad."""
    ad = pytest.importorskip("anndata")
    p = make_archs4(tmp_path / "f.h5", 50, 30, chunks=(10, 10), dtype="<f8")
    q = make_archs4(tmp_path / "u.h5", 50, 30, chunks=(10, 10))
    with ARCHS4File(p) as f, ARCHS4File(q) as g:  # whole floats read as counts
        np.testing.assert_array_equal(f.read(np.arange(30)), g.read(np.arange(30)))
    with h5py.File(p, "a") as f:
        f["data/expression"][7, 4] = 2.5
    with ARCHS4File(p) as f, pytest.raises(ValueError, match=r"f\.h5: .*2\.5.*integer counts"):
        f.read(np.arange(30))
    from bulkformer.data.h5ad import H5ADSource

    ref = make_reference(37)
    x = np.random.default_rng(0).poisson(5, (6, 37)).astype(np.float32)
    var = pd.DataFrame(index=ref.gene_ids)
    x[2, 3] += 1e-5  # float noise on a count: accepted, as for ARCHS4
    ad.AnnData(X=x, var=var).write_h5ad(tmp_path / "ok.h5ad")
    src = H5ADSource(tmp_path / "ok.h5ad")
    src.read_block(np.arange(6), src.align(ref))
    x[2, 3] = 2.5
    ad.AnnData(X=x, var=var).write_h5ad(tmp_path / "bad.h5ad")
    src = H5ADSource(tmp_path / "bad.h5ad")
    with pytest.raises(ValueError, match=r"bad\.h5ad: X: 1 non-integer value"):
        src.read_block(np.arange(6), src.align(ref))


@pytest.mark.parametrize("kind", ["log1p_tpm", "tpm"])
def test_tpm_values_that_cannot_be_tpm_refused(tmp_path, kind):
    ad = pytest.importorskip("anndata")
    from bulkformer.data.h5ad import H5ADSource

    ref = make_reference(37)
    tpm = np.full((4, 37), 1e6 / 37)
    tpm[0] = 0
    tpm[0, 0] = 1e6  # the largest possible value is fine

    def source(name, t, log=None):
        x = (np.log1p(t) if kind == "log1p_tpm" else t) if log is None else log
        p = tmp_path / name
        ad.AnnData(X=x.astype(np.float32), var=pd.DataFrame(index=ref.gene_ids)).write_h5ad(p)
        return H5ADSource(p, values=kind)

    src = source("a.h5ad", tpm)
    src.read_block(np.arange(4), src.align(ref))
    big = tpm.copy()
    big[1, 5] = 1.01e6
    log2 = np.log2(tpm + 1)  # log2(TPM + 1) given as log1p_tpm: 19.9 > ln(1e6 + 1)
    src = source("b.h5ad", big, log2 if kind == "log1p_tpm" else None)
    n = 112 if kind == "log1p_tpm" else 1
    with pytest.raises(ValueError, match=rf"b\.h5ad: X: {n} value\(s\) above .*expected {kind}"):
        src.read_block(np.arange(4), src.align(ref))
    src = source("c.h5ad", np.full((4, 37), 2e6 / 37))  # FPKM-like: values possible, sums not
    with pytest.raises(ValueError, match=r"c\.h5ad: X: 4 sample\(s\) whose TPM add up to more"):
        src.read_block(np.arange(4), src.align(ref))


def test_locked_h5ad_hints_at_file_locking(tmp_path):
    ad = pytest.importorskip("anndata")
    from bulkformer.data.h5ad import H5ADSource

    ref = make_reference(37)
    x = np.ones((3, 37), dtype=np.float32)
    p = tmp_path / "locked.h5ad"
    ad.AnnData(X=x, var=pd.DataFrame(index=ref.gene_ids)).write_h5ad(p)
    with open(p, "rb") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # as a writer holding the file does
        try:
            with pytest.raises(ValueError, match=r"locked\.h5ad: .*HDF5_USE_FILE_LOCKING=FALSE"):
                H5ADSource(p)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    assert H5ADSource(p).n_samples == 3


# --------------------------------------------------------------------- GDC
@pytest.fixture(scope="module")
def gdc(tmp_path_factory):
    from bulkformer.data.synthetic_gdc import make_gdc_dir

    root = tmp_path_factory.mktemp("gdc") / "base"
    return make_gdc_dir(root, 4, n_genes=3000)


def _gdc_build(tmp_path, d, sheet, name, *extra):
    return cli_main(["preprocess", "--gdc", str(d), "--sample-sheet", str(sheet), "--min-nonzero",
                     "10", "--no-progress", "--out", str(tmp_path / name), *extra])  # fmt: skip


def test_gdc_documented_project_id_label(tmp_path, gdc, capsys):
    d, sheet, _, _ = gdc
    assert _gdc_build(tmp_path, d, sheet, "c", "--label", "Project ID") == 0
    c = Corpus.open(tmp_path / "c")
    assert sorted(set(c.samples["label"])) == ["TCGA-BRCA", "TCGA-COAD", "TCGA-LUAD"]
    assert _gdc_build(tmp_path, d, sheet, "e", "--label", "No Such Column") == 1
    assert "no sample column 'No Such Column'" in _err(capsys)


def test_gdc_crlf_files_mix_with_lf_files(tmp_path, gdc):
    d, sheet, _, _ = gdc
    crlf = tmp_path / "crlf"
    shutil.copytree(d, crlf)
    files = sorted(crlf.glob("*/*.tsv"))
    for f in files[::2]:  # the first file in sheet order and others: CRLF
        f.write_bytes(f.read_bytes().replace(b"\n", b"\r\n"))
    assert _gdc_build(tmp_path, d, sheet, "lf") == 0
    assert _gdc_build(tmp_path, crlf, crlf / "gdc_sample_sheet.tsv", "cr") == 0
    np.testing.assert_array_equal(
        np.load(tmp_path / "lf" / "expression.npy"), np.load(tmp_path / "cr" / "expression.npy")
    )


@pytest.mark.parametrize("what", ["empty", "empty_gz", "binary"])
def test_gdc_bad_count_file_is_named(tmp_path, gdc, capsys, what):
    d, sheet, _, _ = gdc
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    victim = sorted(bad.glob("*/*.tsv"))[1]
    data = {"empty": b"", "empty_gz": gzip.compress(b""), "binary": os.urandom(5000) + b"\0"}
    victim.write_bytes(data[what])
    assert _gdc_build(tmp_path, bad, bad / "gdc_sample_sheet.tsv", "c") == 1
    line = _err(capsys)
    assert victim.name in line and ("empty file" in line or "binary data" in line), line


@pytest.mark.parametrize("what", ["binary", "latin1", "gzip"])
def test_gdc_bad_sample_sheet_is_named(tmp_path, gdc, capsys, what):
    d, sheet, _, _ = gdc
    s = tmp_path / "sheet.tsv"
    text = open(sheet, "rb").read()
    if what == "binary":
        s.write_bytes(os.urandom(3000))
    elif what == "latin1":
        s.write_bytes(text.replace(b"Primary Tumor", b"Prim\xe4ry Tumor"))
    else:  # a gzipped sheet is read
        s.write_bytes(gzip.compress(text))
    rc = _gdc_build(tmp_path, d, s, "c")
    if what == "gzip":
        assert rc == 0
        return
    assert rc == 1
    line = _err(capsys)
    assert "sheet.tsv: " in line and ("binary data" in line or "not UTF-8" in line), line


# --------------------------------------------------------------------- gene lengths
GTF = """\
#!genome-build GRCh38 (GENCODE style, versioned IDs, a _PAR_Y copy)
chrX\tHAVANA\tgene\t100\t500\t.\t+\t.\tgene_id "ENSG00000000001.20"; gene_type "protein_coding";
chrX\tHAVANA\texon\t100\t200\t.\t+\t.\tgene_id "ENSG00000000001.20"; transcript_id "T1";
chrX\tHAVANA\texon\t150\t300\t.\t+\t.\tgene_id "ENSG00000000001.20"; transcript_id "T2";
chrX\tHAVANA\texon\t301\t310\t.\t+\t.\tgene_id "ENSG00000000001.20"; transcript_id "T2";
chrY\tHAVANA\texon\t100\t200\t.\t+\t.\tgene_id "ENSG00000000001.20_PAR_Y"; transcript_id "T1";
1\tensembl\texon\t10\t19\t.\t+\t.\tgene_id "ENSG00000000002"; gene_biotype "lncRNA";
1\tensembl\texon\t30\t39\t.\t+\t.\tgene_id "ENSG00000000002"; gene_biotype "lncRNA";
X\tensembl\texon\t1\t50\t.\t+\t.\tgene_id "ENSG00000000003"; transcript_id "T4";
Y\tensembl\texon\t1\t50\t.\t+\t.\tgene_id "ENSG00000000003"; transcript_id "T4";
"""


def test_genes_lengths_from_gtf(tmp_path, capsys):
    from bulkformer.data.lengths import read_lengths_tsv

    g = tmp_path / "a.gtf.gz"
    g.write_bytes(gzip.compress(GTF.encode()))
    out = tmp_path / "lengths.tsv"
    assert cli_main(["genes", "lengths", "--gtf", str(g), "--out", str(out)]) == 0
    s = read_lengths_tsv(out)
    # union of [100,300] and [301,310] = 211; the _PAR_Y copy is its own gene; an ID on X and
    # Y (Ensembl PAR) is one gene of 50 bp, not 100
    assert s.to_dict() == {"ENSG00000000001": 211.0, "ENSG00000000001_PAR_Y": 101.0,
                           "ENSG00000000002": 20.0, "ENSG00000000003": 50.0}  # fmt: skip
    before = out.read_bytes()
    assert cli_main(["genes", "lengths", "--gtf", str(g), "--out", str(out)]) == 1
    assert "exists (use --force" in _err(capsys) and out.read_bytes() == before
    (tmp_path / "x.gtf").write_text('chr1\tsrc\texon\tA\tB\t.\t+\t.\tgene_id "G";\n')
    rc = cli_main(["genes", "lengths", "--gtf", str(tmp_path / "x.gtf"), "--out", str(out),
                   "--force"])  # fmt: skip
    assert rc == 1 and "x.gtf: exon lines need integer start" in _err(capsys)
    assert out.read_bytes() == before and not list(tmp_path.glob("*.tmp-*"))


def _counts_h5ad(tmp_path, ref, seed=0):
    ad = pytest.importorskip("anndata")
    rng = np.random.default_rng(seed)
    ids = [f"{g}.3" for g in ref.gene_ids] + ["ENSG00000999999.1"]  # + a gene outside the ref
    x = rng.poisson(rng.uniform(1, 50, len(ids)), (12, len(ids))).astype(np.float32)
    obs = pd.DataFrame(index=[f"S{i}" for i in range(12)])
    ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=ids)).write_h5ad(tmp_path / "in.h5ad")
    return x.astype(np.float64), np.array(ids, dtype=object)


def test_preprocess_lengths_table_and_fallback_none(tmp_path, capsys):
    from bulkformer.data.genes import strip_version
    from bulkformer.data.oracle import log1p_tpm_ref

    ref = make_reference(37)
    ref.to_tsv(tmp_path / "ref.tsv")
    x, ids = _counts_h5ad(tmp_path, ref)
    rng = np.random.default_rng(5)
    uids = strip_version(ids)
    table = pd.Series(rng.uniform(200, 20000, len(ids)), index=uids)
    table = table.drop(["ENSG00000000005", "ENSG00000000011"])  # two genes without a length
    (tmp_path / "len.tsv").write_text(
        "# made by hand\ngene_id\tlength\n" + "".join(f"{g}.9\t{v:.3f}\n" for g, v in table.items())
    )
    lens = table.reindex(uids).to_numpy()
    base = ["preprocess", "--h5ad", str(tmp_path / "in.h5ad"), "--reference",
            str(tmp_path / "ref.tsv"), "--min-nonzero", "1", "--splits", "1,0,0", "--no-progress",
            "--lengths", str(tmp_path / "len.tsv")]  # fmt: skip
    gm = np.r_[np.arange(37), -1]
    for fb, name in (("1000", "a"), ("none", "b")):
        assert cli_main([*base, "--fallback-length", fb, "--out", str(tmp_path / name)]) == 0
        c = Corpus.open(tmp_path / name)
        L = np.where(np.isnan(lens) & (gm >= 0), 1000.0, lens) if fb == "1000" else lens
        want = log1p_tpm_ref(x, L, gm, 37)
        z = np.asarray(c.expression[:], dtype=np.float64)
        got = z * c.stats.std + c.stats.mean  # z back to log1p(TPM) (covered columns)
        cov = ~np.asarray(c.missing[0], dtype=bool)
        np.testing.assert_allclose(got[:, cov], want[:, cov], rtol=2e-3, atol=2e-3)
        missing = np.flatnonzero(~cov).tolist()
        assert missing == ([] if fb == "1000" else [5, 11])
    capsys.readouterr()
    assert cli_main([*base, "--fallback-length", "-5", "--out", str(tmp_path / "c")]) == 1
    assert "--fallback-length '-5': expected a length > 0" in _err(capsys)


@pytest.mark.parametrize(
    "text,msg",
    [
        ("gene\tbp\nENSG00000000001\t100\n", r"lacks column\(s\) \['gene_id', 'length'\]"),
        ("gene_id\tlength\nENSG00000000001\t-4\n", r"row 2 \(gene_id 'ENSG00000000001'\)"),
        ("gene_id\tlength\nENSG00000000001\tNA\n", r"has length 'NA'"),
        ("gene_id\tlength\nENSG1.1\t10\nENSG1.2\t20\n", r"gene ENSG1 is listed 2 times"),
        ("gene_id\tlength\nTP53\t100\nBRCA1\t200\n", r"lacks all 37 reference genes of .*in\.h5ad"),
    ],
)
def test_bad_lengths_tables(tmp_path, capsys, text, msg):
    ref = make_reference(37)
    ref.to_tsv(tmp_path / "ref.tsv")
    _counts_h5ad(tmp_path, ref)
    (tmp_path / "len.tsv").write_text(text)
    rc = cli_main(["preprocess", "--h5ad", str(tmp_path / "in.h5ad"), "--reference",
                   str(tmp_path / "ref.tsv"), "--lengths", str(tmp_path / "len.tsv"),
                   "--out", str(tmp_path / "c")])  # fmt: skip
    assert rc == 1
    line = _err(capsys)
    import re

    assert "len.tsv" in line and re.search(msg, line), line
    assert not (tmp_path / "c").exists()


def test_lengths_are_part_of_the_source_identity(tmp_path):
    """A partial built with one lengths table is never resumed with another."""
    from bulkformer.data.lengths import LengthOverride

    p = make_archs4(tmp_path / "s.h5", 50, 30, chunks=(10, 10))
    src = ARCHS4Source(p)
    t1 = pd.Series([100.0, 200.0], index=["ENSG00000000000", "ENSG00000000001"])
    a = LengthOverride(src, t1, 1000.0).fingerprint()
    b = LengthOverride(src, t1 * 2, 1000.0).fingerprint()
    c = LengthOverride(src, t1, None).fingerprint()
    assert a != b and a != c and a["sha256_head_tail"] == src.fingerprint()["sha256_head_tail"]
    ref = make_reference(50)
    d1 = build_corpus([LengthOverride(src, t1, 1000.0)], tmp_path / "c1", ref, min_nonzero=1,
                      progress=False)  # fmt: skip
    assert d1.manifest["sources"][0]["fingerprint"]["lengths"]["fallback_length"] == 1000.0
