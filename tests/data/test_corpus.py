import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from corpus_data import (
    BUILD_SCRIPT,
    FILES,
    make_reference,
    make_source_data,
    pipeline_ref,
    same_files,
)

import bulkformer
from bulkformer.cli import main as cli_main
from bulkformer.data.corpus import (
    Corpus,
    CorpusPart,
    CorpusStats,
    assign_splits,
    build_corpus,
    merge_parts,
)
from bulkformer.data.corpus._npy import NpyRows
from bulkformer.data.genes import ReferenceMismatchError
from bulkformer.data.memory import ArraySource

REPO = str(Path(bulkformer.__file__).resolve().parents[1])


def _lengths(gene_ids, seed):
    rng = np.random.default_rng(seed)
    ln = rng.uniform(400, 8000, len(gene_ids))
    ln[::11] = np.nan  # some source genes without a length: excluded from TPM
    return ln


def _two_sources():
    """Two sources with different, partly overlapping gene sets, versions, a duplicate gene ID
    and genes outside the reference; QC (min_nonzero=24) drops some samples."""
    c1, g1, s1 = make_source_data(61, list(range(2, 45)), seed=1)
    g1[5] = g1[4].split(".")[0] + ".9"  # duplicate of gene 4 → TPMs summed
    c2, g2, s2 = make_source_data(23, list(range(0, 30, 1)) + [50, 51], seed=2, zero_frac=0.6)
    l1, l2 = _lengths(g1, 11), _lengths(g2, 12)
    return [(c1, g1, s1, l1), (c2, g2, s2, l2)]


def _sources(data, **kw):
    return [
        ArraySource(c, g, s, lengths=ln, path=f"mem{i}", **kw)
        for i, (c, g, s, ln) in enumerate(data)
    ]


# ---------------------------------------------------------------------------- pipeline
def test_build_matches_numpy_reference(tmp_path, reference):
    data = _two_sources()
    corpus = build_corpus(
        _sources(data),
        tmp_path / "c",
        reference,
        label="tissue",
        min_nonzero=24,
        seed=3,
        block_size=8,
        progress=False,
    )
    N = sum(len(d[0]) for d in data)
    labels = np.concatenate([d[2]["tissue"].to_numpy() for d in data])
    split = assign_splits(N, (0.9, 0.05, 0.05), seed=3, labels=labels)
    want = pipeline_ref(
        [(c, g, ln) for c, g, _, ln in data], reference, min_nonzero=24, split=split
    )
    assert 0 < want["keep"].sum() < N  # QC drops some, keeps most
    assert len(corpus) == want["keep"].sum()
    assert corpus.expression.dtype == np.float16
    assert isinstance(corpus.expression, np.memmap)
    np.testing.assert_allclose(
        corpus.expression, want["z"].astype(np.float16), rtol=2e-3, atol=2e-3
    )
    np.testing.assert_array_equal(corpus.missing, want["missing"])
    np.testing.assert_array_equal(corpus.missing_rows(), want["missing"][want["source"]])
    st = corpus.stats
    np.testing.assert_allclose(st.mean, want["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st.std, want["std"], rtol=1e-5, atol=1e-6)
    assert st.reference_id == reference.id
    # samples table, splits, excluded
    s = corpus.samples
    ids = np.concatenate([d[2].index for d in data])
    assert s["sample_id"].tolist() == ids[want["keep"]].tolist()
    assert s["label"].tolist() == labels[want["keep"]].tolist()
    assert s["source_index"].tolist() == want["source"].tolist()
    names = np.array(["train", "val", "test"])
    assert s["split"].tolist() == names[split[want["keep"]]].tolist()
    sp = corpus.splits
    for k in names:
        np.testing.assert_array_equal(sp[k], np.flatnonzero(s["split"] == k))
    assert len(corpus.excluded) == N - len(corpus)
    assert (corpus.excluded["nonzero_genes"] < 24).all()
    m = corpus.manifest
    assert m["rows"]["passed_qc"] == len(corpus) and m["rows"]["input"] == N
    assert m["reference"]["id"] == reference.id
    assert "progress.npz" not in os.listdir(corpus.path)
    assert not (tmp_path / "c.partial").exists()
    assert "2 classes" not in corpus.describe() and "stratified by 'tissue'" in corpus.describe()
    # readable without bulkformer: plain numpy/pandas
    x = np.load(tmp_path / "c" / "expression.npy", mmap_mode="r")
    assert x.shape == (len(corpus), len(reference))
    pd.read_csv(tmp_path / "c" / "samples.tsv", sep="\t")


def test_given_stats_standardize_like_reference_corpus(tmp_path, reference):
    data = _two_sources()
    base = build_corpus(
        _sources(data[:1]), tmp_path / "a", reference, min_nonzero=0, progress=False
    )
    new = build_corpus(
        _sources(data[1:]),
        tmp_path / "b",
        reference,
        min_nonzero=0,
        stats=tmp_path / "a",
        progress=False,
    )
    np.testing.assert_array_equal(new.stats.mean, base.stats.mean)
    np.testing.assert_array_equal(new.stats.std, base.stats.std)
    c, g, _, ln = data[1]
    want = pipeline_ref(
        [(c, g, ln)],
        reference,
        min_nonzero=0,
        split=np.zeros(len(c)),
        stats=(base.stats.mean, base.stats.std),
    )
    np.testing.assert_allclose(new.expression, want["z"].astype(np.float16), rtol=2e-3, atol=2e-3)
    assert "given" in new.describe()


def test_given_stats_direct_build_equals_two_phase_merge(tmp_path, reference):
    """With given statistics a build writes z while reading (no float32 detour) and then drops
    the rows QC excluded; shards take the two-phase path (log1p, then a merge standardizes).
    Both give the same bytes, and the numpy pipeline's values."""
    data = _two_sources()
    base = build_corpus(
        _sources(data[:1]), tmp_path / "a", reference, min_nonzero=0, progress=False
    )
    kw = dict(label="tissue", min_nonzero=24, block_size=7, stats=base.path, progress=False)
    # progress bars on (they count rows of every block)
    direct = build_corpus(_sources(data), tmp_path / "direct", reference, **dict(kw, progress=True))
    assert not (direct.path / "log1p.npy").exists()
    n_excluded = direct.manifest["rows"]["excluded"]
    assert n_excluded > 0  # the file was shrunk in place
    assert direct.expression.shape == (84 - n_excluded, len(reference))
    for i in range(2):
        build_corpus(_sources(data), tmp_path / f"p{i}", reference, shard=f"{i}/2", **kw)
    merged = merge_parts([tmp_path / "p0", tmp_path / "p1"], tmp_path / "m", progress=False)
    same_files(direct.path, merged.path)
    want = pipeline_ref(
        [(c, g, ln) for c, g, _, ln in data],
        reference,
        min_nonzero=24,
        split=np.zeros(84),
        stats=(base.stats.mean, base.stats.std),
    )
    np.testing.assert_allclose(
        direct.expression, want["z"].astype(np.float16), rtol=2e-3, atol=2e-3
    )


@pytest.mark.parametrize("n_in,n", [(1000, 999), (100_000, 5), (64, 64), (7, 0)])
def test_set_npy_rows_shrinks_in_place(tmp_path, n_in, n):
    from bulkformer.data.corpus._npy import set_npy_rows

    a = np.arange(n_in * 3, dtype=np.float16).reshape(n_in, 3)
    p = tmp_path / "x.npy"
    np.save(p, a)
    offset = p.stat().st_size - a.nbytes
    with open(p, "ab") as f:
        f.write(b"\0" * 1000)  # what an in-place build leaves behind the rows
    set_npy_rows(p, n)
    set_npy_rows(p, n)  # idempotent
    b = np.load(p)
    np.testing.assert_array_equal(b, a[:n])
    assert p.stat().st_size == offset + b.nbytes
    with pytest.raises(ValueError, match="cannot grow"):
        set_npy_rows(p, n + 1)


def test_assign_splits_stratified_seeded():
    labels = np.array(["x"] * 200 + ["y"] * 100 + ["tiny"] * 2 + ["z"] * 41)
    a = assign_splits(len(labels), (0.8, 0.1, 0.1), seed=5, labels=labels)
    b = assign_splits(len(labels), (0.8, 0.1, 0.1), seed=5, labels=labels)
    c = assign_splits(len(labels), (0.8, 0.1, 0.1), seed=6, labels=labels)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    for lab, n in (("x", 200), ("y", 100), ("z", 41)):
        m = labels == lab
        assert (a[m] == 1).sum() == int(n * 0.1 + 0.5)
        assert (a[m] == 2).sum() == int(n * 0.1 + 0.5)
    assert (a[labels == "tiny"] == 0).all()  # too small for val/test: stays in train
    one = assign_splits(1, seed=0)
    assert one.tolist() == [0]
    u = assign_splits(1001, (0.9, 0.05, 0.05), seed=0)
    assert np.bincount(u).tolist() == [901, 50, 50]
    with pytest.raises(ValueError, match="three non-negative"):
        assign_splits(10, (0.5, 0.5))


# ---------------------------------------------------------------------------- shards, resume
def test_shards_merge_equal_single_run(tmp_path, reference):
    data = _two_sources()
    kw = dict(label="tissue", min_nonzero=24, seed=1, block_size=7, progress=False)
    # progress bars on for the single build and the merge (both phases count rows)
    single = build_corpus(_sources(data), tmp_path / "single", reference, **dict(kw, progress=True))
    parts = []
    for i in range(3):
        p = build_corpus(_sources(data), tmp_path / f"part{i}", reference, shard=f"{i}/3", **kw)
        assert isinstance(p, CorpusPart) and "part" in p.describe()
        parts.append(tmp_path / f"part{i}")
    with pytest.raises(ValueError, match="exactly once"):
        merge_parts(parts[:2], tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="shard part"):
        Corpus.open(parts[0])
    merged = merge_parts(parts[::-1], tmp_path / "merged", progress=True)
    same_files(single.path, merged.path)
    assert merged.manifest["build"]["merged_from"]


@pytest.mark.parametrize("phase", ["read", "standardize", "read with given stats"])
def test_kill_and_resume_gives_identical_bytes(tmp_path, phase):
    script = tmp_path / "build.py"
    script.write_text(BUILD_SCRIPT.format(repo=REPO, tests=str(Path(__file__).parent)))
    run = [sys.executable, str(script)]
    subprocess.run(run + [str(tmp_path / "whole")], check=True, timeout=60)
    extra = []
    if phase.endswith("given stats"):  # z written while reading (no phase 2 to speak of)
        phase, extra = "read", [str(tmp_path / "whole")]
        subprocess.run(run + [str(tmp_path / "whole2")] + extra, check=True, timeout=60)
    out = tmp_path / "killed"
    env = dict(os.environ, SLOW="0.05")
    proc = subprocess.Popen(run + [str(out)] + extra, env=env)
    mf = tmp_path / "killed.partial" / "manifest.json"
    deadline = time.time() + 60
    try:
        while time.time() < deadline:
            try:
                pr = json.loads(mf.read_text()).get("progress", {})
            except (OSError, ValueError):
                pr = {}
            if pr.get("phase") == phase and pr.get("blocks_done", 0) >= 4:
                break
            assert proc.poll() is None, "build finished before it could be killed"
            time.sleep(0.01)
        else:
            pytest.fail("build made no progress")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists() and (tmp_path / "killed.partial").exists()
    with pytest.raises(FileNotFoundError, match="unfinished build"):
        Corpus.open(out)
    subprocess.run(run + [str(out)] + extra, check=True, timeout=60)  # same command: resumes
    same_files(tmp_path / ("whole2" if extra else "whole"), out)
    assert json.loads((out / "manifest.json").read_text())["build"]["resumed"] == 1


def test_incompatible_partial_is_refused(tmp_path, reference):
    data = _two_sources()
    (tmp_path / "c.partial").mkdir()
    (tmp_path / "c.partial" / "manifest.json").write_text(
        '{"format": "bulkformer-corpus", "kind": "corpus", "plan": {}}'
    )
    with pytest.raises(FileExistsError, match="interrupted build"):
        build_corpus(_sources(data), tmp_path / "c", reference, min_nonzero=0, progress=False)
    c = build_corpus(
        _sources(data), tmp_path / "c", reference, min_nonzero=0, overwrite=True, progress=False
    )
    assert len(c) == 84


def _interrupted(tmp_path, reference, data, monkeypatch, *, durable, fail_at=40):
    """Run a build that stops with an I/O-like error (not bad input) at the block of the first
    source starting at row ``fail_at``, leaving its ``.partial`` behind as after a kill."""
    import bulkformer.data.corpus.build as corpus_mod

    read = ArraySource.read_block

    def failing(self, rows, alignment, *, threads=None):
        if self.path == "mem0" and rows[0] == fail_at:
            raise OSError("simulated failure")
        return read(self, rows, alignment, threads=threads)

    with monkeypatch.context() as mp:
        mp.setattr(corpus_mod, "COMMIT_SECONDS", 0.0)  # commit after every block
        mp.setattr(ArraySource, "read_block", failing)
        with pytest.raises(OSError, match="simulated"):
            build_corpus(
                _sources(data),
                tmp_path / "c",
                reference,
                min_nonzero=24,
                block_size=8,
                progress=False,
                durable=durable,
            )
    mf = tmp_path / "c.partial" / "manifest.json"
    m = json.loads(mf.read_text())
    assert m["progress"]["blocks_done"] >= 1 and m["build"]["durable"] is durable
    return mf, m


@pytest.mark.parametrize("durable", [False, True])
def test_durable_fsyncs_data_and_survives_a_reboot(tmp_path, reference, monkeypatch, durable):
    """Without ``durable`` no data file is fsync'd, and an unfinished build from another boot
    starts over (its unsynced data may be lost); with it, data is fsync'd before each commit
    and the build resumes after a reboot. Either way the result equals an uninterrupted run."""
    data = _two_sources()
    whole = build_corpus(
        _sources(data), tmp_path / "whole", reference, min_nonzero=24, block_size=8, progress=False
    )
    synced = []
    monkeypatch.setattr(NpyRows, "sync", lambda self: synced.append(self.path.name))
    mf, m = _interrupted(tmp_path, reference, data, monkeypatch, durable=durable)
    assert ("expression.npy" in synced) is durable  # phase 1's float32 rows live there
    m["build"]["boot_id"] = "another-boot"  # the machine restarted since
    mf.write_text(json.dumps(m))
    c = build_corpus(
        _sources(data),
        tmp_path / "c",
        reference,
        min_nonzero=24,
        block_size=8,
        progress=False,
        durable=durable,
    )
    assert c.manifest["build"]["resumed"] == (1 if durable else 0)
    assert c.manifest["build"]["durable"] is durable and "boot_id" not in c.manifest["build"]
    assert ("expression.npy" in synced) is durable
    assert sorted(p.name for p in c.path.iterdir()) == sorted(FILES + ["manifest.json"])
    same_files(whole.path, c.path)


@pytest.mark.parametrize("kill_after", [1, 2, 3, 6])
def test_inplace_standardize_resumes_after_a_kill_at_any_block(
    tmp_path, reference, monkeypatch, kill_after
):
    """Phase 2 overwrites the float32 rows it converts; with no timed commits at all, the
    rows a kill leaves to convert must still be intact (the build commits before overwriting
    any row that is not committed as done)."""
    import bulkformer.data.corpus.build as corpus_mod

    data = _two_sources()
    kw = dict(min_nonzero=24, block_size=8, progress=False)
    whole = build_corpus(_sources(data), tmp_path / "whole", reference, **kw)
    orig, rows = corpus_mod.standardize, NpyRows.rows
    with monkeypatch.context() as mp:
        mp.setattr(corpus_mod, "COMMIT_SECONDS", 1e9)  # only the commits the layout needs

        def killed_at_block(*a, **k):
            n = [0]

            def killing_rows(self, start, count, *, write=False):
                # block ``kill_after`` is converted and its commit (if any) done: die before
                # the next block writes anything
                n[0] += write
                if write and n[0] == kill_after + 1:
                    raise OSError("simulated kill")
                return rows(self, start, count, write=write)

            mp.setattr(NpyRows, "rows", killing_rows)
            return orig(*a, **k)

        mp.setattr(corpus_mod, "standardize", killed_at_block)
        with pytest.raises(OSError, match="simulated kill"):
            build_corpus(_sources(data), tmp_path / "c", reference, **kw)
    c = build_corpus(_sources(data), tmp_path / "c", reference, **kw)
    assert c.manifest["build"]["resumed"] == 1
    same_files(whole.path, c.path)


def test_build_without_memory_maps_gives_the_same_bytes(tmp_path, reference, monkeypatch):
    """File systems without shared memory maps: phase 2 and the given-stats path fall back to
    copies (pread/pwrite) and write the same corpus."""
    import errno

    import bulkformer.data.corpus._npy as npy_mod

    data = _two_sources()
    kw = dict(min_nonzero=24, block_size=8, progress=False)
    a = build_corpus(_sources(data), tmp_path / "a", reference, **kw)
    sa = build_corpus(_sources(data), tmp_path / "sa", reference, stats=a.path, **kw)

    def no_mmap(*args, **kwargs):
        raise OSError(errno.ENODEV, "no shared mappings here")

    monkeypatch.setattr(npy_mod, "_mmap", no_mmap)
    b = build_corpus(_sources(data), tmp_path / "b", reference, **kw)
    sb = build_corpus(_sources(data), tmp_path / "sb", reference, stats=a.path, **kw)
    same_files(a.path, b.path)
    same_files(sa.path, sb.path)


def test_partial_from_another_file_layout_is_not_resumed(tmp_path, reference, monkeypatch):
    """A partial build left by a bulkformer whose partial files were laid out differently
    (before phase 2 converted in place) must not be resumed into a corrupt corpus."""
    data = _two_sources()
    kw = dict(min_nonzero=24, block_size=8, progress=False)
    whole = build_corpus(_sources(data), tmp_path / "whole", reference, **kw)
    mf, m = _interrupted(tmp_path, reference, data, monkeypatch, durable=False)
    del m["plan"]["partial_layout"]  # as an older version wrote it
    mf.write_text(json.dumps(m))
    with pytest.raises(FileExistsError, match="another version"):
        build_corpus(_sources(data), tmp_path / "c", reference, **kw)
    c = build_corpus(_sources(data), tmp_path / "c", reference, overwrite=True, **kw)
    assert c.manifest["build"]["resumed"] == 0
    same_files(whole.path, c.path)


def test_full_disk_fails_early_with_a_clear_error(tmp_path, reference, monkeypatch):
    """Files are reserved on disk when created: a full disk is an OSError naming the file and
    the size (not a SIGBUS from a memory-mapped write later); file systems without fallocate
    just skip the reservation."""
    import errno

    data = _two_sources()
    kw = dict(min_nonzero=24, block_size=8, progress=False)
    whole = build_corpus(_sources(data), tmp_path / "whole", reference, **kw)

    def unsupported(fd, offset, size):
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    c = build_corpus(_sources(data), tmp_path / "c", reference, **kw)
    same_files(whole.path, c.path)

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError, match=r"expression\.npy: not enough disk space: .* GB"):
        build_corpus(_sources(data), tmp_path / "d", reference, **kw)
    with pytest.raises(OSError, match="not enough disk space"):
        build_corpus(_sources(data), tmp_path / "e", reference, stats=whole.path, **kw)


def test_non_durable_build_resumes_on_the_same_boot(tmp_path, reference, monkeypatch):
    data = _two_sources()
    whole = build_corpus(
        _sources(data), tmp_path / "whole", reference, min_nonzero=24, block_size=8, progress=False
    )
    _interrupted(tmp_path, reference, data, monkeypatch, durable=False)
    c = build_corpus(
        _sources(data), tmp_path / "c", reference, min_nonzero=24, block_size=8, progress=False
    )
    assert c.manifest["build"]["resumed"] == 1
    same_files(whole.path, c.path)


# ---------------------------------------------------------------------------- bad input
class _NaNSource(ArraySource):
    """Validates nothing up front and yields NaN in its second block (a buggy reader)."""

    def read_block(self, rows, alignment, *, threads=None):
        blk = super().read_block(rows, alignment)
        if rows[0] >= 8:
            blk.values[0, 0] = np.nan
        return blk


def test_bad_inputs_leave_nothing_behind(tmp_path, reference):
    data = _two_sources()
    c, g, s, ln = data[0]
    out = tmp_path / "c"

    def fails(exc, match, sources, **kw):
        kw.setdefault("min_nonzero", 0)
        with pytest.raises(exc, match=match):
            build_corpus(sources, out, reference, progress=False, **kw)
        assert not out.exists() and not (tmp_path / "c.partial").exists()

    other = [f"GENE{i}" for i in range(c.shape[1])]
    fails(ValueError, "unknown gene ID scheme", [ArraySource(c, other, s)])
    fails(ValueError, "duplicate sample ID", [ArraySource(c, g, s, ln), ArraySource(c, g, s, ln)])
    fails(ValueError, "no sample column 'cancer'.*tissue, batch", _sources(data), label="cancer")
    fails(ValueError, "non-finite", [_NaNSource(c, g, s, ln)], block_size=8)
    fails(ValueError, "i/n", _sources(data), shard="1-3")
    with pytest.raises(ValueError, match="NaN"):
        ArraySource(np.where(c > 30, np.nan, c), g, s)
    with pytest.raises(ValueError, match="negative"):
        ArraySource(c - 5, g, s)
    with pytest.raises(ValueError, match="non-integer"):
        ArraySource(c * 0.5, g, s)
    # statistics of another reference
    small = make_reference(30)
    base = build_corpus(
        [ArraySource(c, g, s, ln)], tmp_path / "small", small, min_nonzero=0, progress=False
    )
    fails(ReferenceMismatchError, "gene reference", _sources(data), stats=base.path / "stats.npz")
    # existing output
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="already exists"):
        build_corpus(_sources(data), out, reference, progress=False)
    assert (out / "keep.txt").read_text() == "user data"


# ---------------------------------------------------------------------------- export, CLI
def test_export_to_anndata_round_trip(tmp_path, reference):
    import anndata as ad

    corpus = build_corpus(
        _sources(_two_sources()),
        tmp_path / "c",
        reference,
        label="tissue",
        min_nonzero=24,
        progress=False,
    )
    a = corpus.to_anndata(slice(3, 11))
    np.testing.assert_array_equal(a.X, corpus.expression[3:11].astype(np.float32))
    assert a.obs_names.tolist() == corpus.samples["sample_id"][3:11].tolist()
    assert a.var_names.tolist() == reference.gene_ids.tolist()
    np.testing.assert_array_equal(a.layers["missing"], corpus.missing_rows(np.arange(3, 11)))
    a.write_h5ad(tmp_path / "x.h5ad")
    b = ad.read_h5ad(tmp_path / "x.h5ad")
    np.testing.assert_array_equal(b.X, a.X)
    assert b.obs["label"].tolist() == a.obs["label"].tolist()
    assert b.uns["bulkformer"]["reference_id"] == reference.id
    v = corpus.to_anndata("val")
    assert v.n_obs == len(corpus.splits["val"]) and set(v.obs["split"]) <= {"val"}
    np.testing.assert_allclose(v.var["std"], corpus.stats.std)


def test_cli_preprocess_info_export_merge(tmp_path, reference, capsys):
    import anndata as ad

    c, g, s, ln = _two_sources()[0]
    var = pd.DataFrame({"length": ln}, index=pd.Index(g, name="gene_id"))
    ad.AnnData(X=c.astype(np.float32), obs=s, var=var).write_h5ad(tmp_path / "in.h5ad")
    reference.to_tsv(tmp_path / "ref.tsv")
    base = [
        "--h5ad",
        str(tmp_path / "in.h5ad"),
        "--reference",
        str(tmp_path / "ref.tsv"),
        "--label",
        "tissue",
        "--min-nonzero",
        "20",
        "--block-size",
        "9",
        "--no-progress",
    ]
    assert cli_main(["preprocess", *base, "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "samples" in out and "matched" in out and "samples/s" in out
    assert cli_main(["preprocess", *base, "--out", str(tmp_path / "c")]) == 1
    assert "already exists" in capsys.readouterr().err
    for i in range(2):
        assert (
            cli_main(["preprocess", *base, "--shard", f"{i}/2", "--out", str(tmp_path / f"p{i}")])
            == 0
        )
    assert (
        cli_main(
            [
                "merge",
                str(tmp_path / "p0"),
                str(tmp_path / "p1"),
                "--out",
                str(tmp_path / "m"),
                "--no-progress",
            ]
        )
        == 0
    )
    same_files(tmp_path / "c", tmp_path / "m")
    capsys.readouterr()
    assert cli_main(["corpus", "info", str(tmp_path / "c")]) == 0
    assert "reference " + reference.id in capsys.readouterr().out
    assert cli_main(["corpus", "info", str(tmp_path / "p0")]) == 0
    assert (
        cli_main(
            [
                "corpus",
                "export",
                str(tmp_path / "c"),
                "--out",
                str(tmp_path / "e.h5ad"),
                "--rows",
                "0:5",
            ]
        )
        == 0
    )
    assert ad.read_h5ad(tmp_path / "e.h5ad").shape == (5, len(reference))
    assert cli_main(["preprocess", "--out", str(tmp_path / "z")]) == 1
    assert "no input" in capsys.readouterr().err
    corpus = Corpus.open(tmp_path / "c")
    assert isinstance(corpus.stats, CorpusStats)
