"""A corpus writer never destroys what it did not make, never shares its output with another
writer, and recovers from a full disk: the lock, --overwrite, and the failure paths."""

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from corpus_data import BUILD_SCRIPT, make_reference, make_source_data, same_files

import bulkformer
from bulkformer._io import LockedError
from bulkformer.cli import main as cli_main
from bulkformer.data.archs4 import ARCHS4Source
from bulkformer.data.corpus import Corpus, CorpusStats, build_corpus, merge_parts
from bulkformer.data.derive import derive_corpus
from bulkformer.data.genes import GeneReference
from bulkformer.data.memory import ArraySource
from bulkformer.data.synthetic import make_archs4

REPO = str(Path(bulkformer.__file__).resolve().parents[1])
KW = dict(label="tissue", min_nonzero=20, block_size=10, progress=False)


def _script_source(ref):
    """The source of BUILD_SCRIPT, in this process."""
    c, g, s = make_source_data(300, list(range(0, 37)), seed=4)
    return ArraySource(c, g, s, lengths=ref.lengths, path="mem")


def _small(tmp_path, name="c", **kw):
    ref = make_reference()
    return build_corpus(_script_source(ref), tmp_path / name, ref, **dict(KW, **kw))


# ---------------------------------------------------------------------------- one writer
def _wait_for_progress(proc, mf: Path, blocks: int = 2):
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            pr = json.loads(mf.read_text()).get("progress", {})
        except (OSError, ValueError):
            pr = {}
        if pr.get("phase") == "read" and pr.get("blocks_done", 0) >= blocks:
            return
        assert proc.poll() is None, "build 1 finished before build 2 could start"
        time.sleep(0.01)
    pytest.fail("build 1 made no progress")


def test_second_build_of_one_out_is_refused_and_the_first_is_unharmed(tmp_path):
    script = tmp_path / "build.py"
    script.write_text(BUILD_SCRIPT.format(repo=REPO, tests=str(Path(__file__).parent)))
    run = [sys.executable, str(script)]
    subprocess.run(run + [str(tmp_path / "solo")], check=True, timeout=60)
    out = tmp_path / "shared"
    proc = subprocess.Popen(run + [str(out)], env=dict(os.environ, SLOW="0.1"))
    try:
        _wait_for_progress(proc, tmp_path / "shared.partial" / "manifest.json")
        ref = make_reference()
        for overwrite in (False, True):  # --overwrite must not break in either
            with pytest.raises(LockedError, match=f"{out}.*another corpus build.*pid {proc.pid}"):
                build_corpus(_script_source(ref), out, ref, overwrite=overwrite, **KW)
        # refused at once: the first build is still running, nothing of it was touched
        assert proc.poll() is None
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    same_files(tmp_path / "solo", out)
    assert not (tmp_path / "shared.lock").exists()  # released (and removed) at the end
    assert json.loads((out / "manifest.json").read_text())["build"]["resumed"] == 0


def test_merge_and_derive_take_the_lock_too(tmp_path):
    ref = make_reference()
    parts = [
        build_corpus(_script_source(ref), tmp_path / f"p{i}", ref, shard=(i, 2), **KW).path
        for i in range(2)
    ]
    c = _small(tmp_path)
    from bulkformer._io import DirLock

    with DirLock(tmp_path / "m", what="test holder"):
        with pytest.raises(LockedError, match="being written by another corpus merge"):
            merge_parts(parts, tmp_path / "m", progress=False)
    with DirLock(tmp_path / "d"):
        with pytest.raises(LockedError, match="another subset-genes"):
            derive_corpus(c, tmp_path / "d", n_genes=5)
    assert not (tmp_path / "m").exists() and not (tmp_path / "d").exists()
    merge_parts(parts, tmp_path / "m", progress=False)  # free again
    derive_corpus(c, tmp_path / "d", n_genes=5)


# ---------------------------------------------------------------------------- --overwrite
def test_overwrite_replaces_only_a_corpus(tmp_path):
    ref = make_reference()
    mine = tmp_path / "mydir"
    mine.mkdir()
    (mine / "important.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a bulkformer corpus.*nothing was deleted"):
        build_corpus(_script_source(ref), mine, ref, overwrite=True, **KW)
    assert (mine / "important.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydir"]  # no partial, no lock

    c = _small(tmp_path)  # a corpus is replaced ...
    (c.path / "notes.txt").write_text("mine")  # ... but not once it holds other files
    with pytest.raises(FileExistsError, match=r"holds files a corpus does not \(notes.txt\)"):
        _small(tmp_path, overwrite=True)
    assert (c.path / "notes.txt").exists()
    (c.path / "notes.txt").unlink()
    assert len(_small(tmp_path, overwrite=True)) == len(c)

    # a file named as output, and an output named like the input corpus it standardizes with
    (tmp_path / "f.txt").write_text("data")
    with pytest.raises(FileExistsError, match="is not a directory"):
        build_corpus(_script_source(ref), tmp_path / "f.txt", ref, overwrite=True, **KW)
    assert (tmp_path / "f.txt").read_text() == "data"
    with pytest.raises(ValueError, match="is the input"):
        _small(tmp_path, stats=c.path, overwrite=True)
    with pytest.raises(ValueError, match="holds the input"):
        _small(tmp_path, name=".", stats=c.path / "stats.npz", overwrite=True)
    assert len(Corpus.open(c.path)) == len(c)
    # merge and derive outputs
    with pytest.raises(FileExistsError, match="not a bulkformer corpus"):
        merge_parts([c.path], mine, overwrite=True, progress=False)
    with pytest.raises(ValueError, match="is the input"):
        derive_corpus(c, c.path, n_genes=5, overwrite=True)
    with pytest.raises(FileExistsError, match="not a bulkformer corpus"):
        derive_corpus(c, mine, n_genes=5, overwrite=True)
    assert (mine / "important.txt").read_text() == "keep me"


def test_a_foreign_partial_is_never_deleted(tmp_path):
    ref = make_reference()
    (tmp_path / "c.partial").mkdir()
    (tmp_path / "c.partial" / "thesis.tex").write_text("x")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not an interrupted build of bulkformer"):
            build_corpus(_script_source(ref), tmp_path / "c", ref, overwrite=overwrite, **KW)
    c = _small(tmp_path, name="d")
    (tmp_path / "e.partial").mkdir()
    (tmp_path / "e.partial" / "thesis.tex").write_text("x")
    with pytest.raises(FileExistsError, match="not an unfinished bulkformer output"):
        derive_corpus(c, tmp_path / "e", n_genes=5)
    assert (tmp_path / "c.partial" / "thesis.tex").exists()
    assert (tmp_path / "e.partial" / "thesis.tex").exists()


@pytest.fixture
def small_h5(tmp_path):
    return make_archs4(tmp_path / "a.h5", 60, 12, chunks=(30, 4), seed=5, single_cell_fraction=0)


def test_cli_refuses_an_output_that_is_the_input_or_the_working_directory(
    tmp_path, small_h5, monkeypatch, capsys
):
    before = Path(small_h5).read_bytes()
    rc = cli_main(["preprocess", "--archs4", small_h5, "--out", small_h5, "--overwrite"])
    assert rc == 1 and "is the input" in capsys.readouterr().err
    assert Path(small_h5).read_bytes() == before
    ref = tmp_path / "ref.tsv"
    ref.write_text("not read")
    rc = cli_main(["preprocess", "--archs4", small_h5, "--reference", str(ref), "--out", str(ref)])
    assert rc == 1 and "is the input" in capsys.readouterr().err
    ref.unlink()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for out in (".", "..", str(tmp_path)):
        rc = cli_main(["preprocess", "--archs4", small_h5, "--out", out, "--overwrite"])
        err = capsys.readouterr().err
        assert rc == 1 and "current directory or one above it" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "work"]  # no .partial, .lock
    assert list(work.iterdir()) == []


# ---------------------------------------------------------------------------- failures
@pytest.mark.parametrize("when", ["first commit", "finished"])
def test_full_disk_at_the_manifest_then_the_rerun_finishes(tmp_path, monkeypatch, when):
    import bulkformer.data.corpus.build as build_mod

    solo = _small(tmp_path, name="solo")
    real = build_mod.write_atomic
    hit = []

    def full_disk(path, data, **kw):
        done = b'"phase": "done"' in data
        if Path(path).name == "manifest.json" and not hit and (when == "finished") == done:
            hit.append(path)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data, **kw)

    monkeypatch.setattr(build_mod, "write_atomic", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _small(tmp_path)
    assert hit and (tmp_path / "c.partial").is_dir() and not (tmp_path / "c").exists()
    monkeypatch.setattr(build_mod, "write_atomic", real)
    c = _small(tmp_path)  # the suggested rerun
    same_files(solo.path, c.path)


@pytest.mark.parametrize(
    "content, why",
    [
        (b"garbage bytes, not numpy at all", "unreadable"),
        (None, "a single array"),
        ({"mean": np.zeros(3)}, r"lacks \['reference_id', 'std'\]"),
        (
            {"mean": np.zeros(3), "std": np.zeros(4), "reference_id": np.array("r")},
            "field 'std' is float64 of shape",
        ),
        (
            {"mean": np.zeros(3), "std": np.zeros(3), "reference_id": np.array(5)},
            "field 'reference_id' is not a string",
        ),
    ],
)
def test_a_bad_stats_file_gets_a_clear_error(tmp_path, content, why):
    p = tmp_path / "stats.npz"
    if isinstance(content, bytes):
        p.write_bytes(content)
    elif content is None:
        with open(p, "wb") as f:
            np.save(f, np.zeros(3))
    else:
        np.savez(p, **content)
    with pytest.raises(ValueError, match=f"{p}: {why}.*expected a corpus stats.npz") as e:
        CorpusStats.load(p)
    assert "allow_pickle" not in str(e.value)


def test_samples_the_single_cell_filter_drops_are_recorded(tmp_path):
    h5 = make_archs4(tmp_path / "a.h5", 80, 40, chunks=(40, 8), seed=2, single_cell_fraction=0.3)
    import h5py

    with h5py.File(h5) as f:
        scp = f["meta/samples/singlecellprobability"][:]
        gsm = f["meta/samples/geo_accession"][:].astype(str)
    dropped = gsm[scp >= 0.5]
    assert 0 < len(dropped) < 40
    with h5py.File(h5) as f:
        ids = f["meta/genes/ensembl_gene_id"][:].astype(str)
    ref = GeneReference(ids, ids, np.full(len(ids), 1000.0), {"source": "test"})
    kw = dict(min_nonzero=10, block_size=8, progress=False)
    c = build_corpus(ARCHS4Source(h5), tmp_path / "c", ref, **kw)
    ex = c.excluded
    filt = ex[ex["source_row"] == -1]
    assert sorted(filt["sample_id"]) == sorted(dropped)
    want = {g: f"single-cell probability {p:.4g} >= 0.5" for g, p in zip(gsm, scp)}
    assert all(r == want[g] for g, r in zip(filt["sample_id"], filt["reason"]))
    rows = c.manifest["rows"]
    assert rows["filtered_by_source"] == len(dropped)
    assert rows["input"] == 40 - len(dropped) == rows["passed_qc"] + rows["excluded"]
    assert "dropped by a source's filter" in c.describe()
    raw = pd.read_csv(c.path / "excluded.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert (raw.loc[raw["source_row"] != "-1", "nonzero_genes"].str.isdigit()).all()
    # shards + merge give the same bytes (the filtered samples are listed once)
    parts = [
        build_corpus(ARCHS4Source(h5), tmp_path / f"p{i}", ref, shard=(i, 2), **kw).path
        for i in range(2)
    ]
    same_files(c.path, merge_parts(parts, tmp_path / "m", progress=False).path)
