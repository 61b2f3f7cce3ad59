"""bulkformer._io: atomic file writes and directory swaps."""

import os

import pytest

from bulkformer import _io


def test_write_atomic_replaces_whole_file_and_cleans_up(tmp_path, monkeypatch):
    p = tmp_path / "f.bin"
    _io.write_atomic(p, b"old")
    _io.write_atomic(p, b"new contents")
    assert p.read_bytes() == b"new contents"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.bin"]

    def broken_replace(src, dst):
        raise OSError("simulated failure")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated"):
        _io.write_atomic(p, b"never")
    assert p.read_bytes() == b"new contents"  # the old file is untouched
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.bin"]  # no temporary left


def _tree(d, text):
    d.mkdir()
    (d / "a.txt").write_text(text)
    (d / "sub").mkdir()
    (d / "sub" / "b.txt").write_text(text)


@pytest.mark.parametrize("existing", [None, "dir", "file"])
def test_replace_dir_swaps_in_the_new_tree(tmp_path, existing):
    dest, new = tmp_path / "out", tmp_path / "out.partial"
    if existing == "dir":
        _tree(dest, "old")
        (dest / "only-old.txt").write_text("x")
    elif existing == "file":
        dest.write_text("a file")
    _tree(new, "new")
    _io.replace_dir(new, dest)
    assert not new.exists()
    assert (dest / "a.txt").read_text() == "new" and (dest / "sub" / "b.txt").read_text() == "new"
    assert not (dest / "only-old.txt").exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out"]  # nothing left aside


def test_replace_dir_keeps_the_old_tree_when_the_swap_fails(tmp_path, monkeypatch):
    dest, new = tmp_path / "out", tmp_path / "out.partial"
    _tree(dest, "old")
    _tree(new, "new")
    real = os.replace

    def fail_second(src, dst):
        if str(src).endswith("out.partial"):
            raise OSError("simulated failure")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", fail_second)
    with pytest.raises(OSError, match="simulated"):
        _io.replace_dir(new, dest)
    assert (dest / "a.txt").read_text() == "old"  # the old tree is back under its name
    assert (new / "a.txt").read_text() == "new"  # and the new one is not lost
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out", "out.partial"]


@pytest.mark.parametrize("unique", [False, True])
def test_atomic_file_renames_on_success_and_cleans_up_on_failure(tmp_path, unique):
    p = tmp_path / "w.bin"
    p.write_bytes(b"old")
    with _io.atomic_file(p, unique=unique) as tmp:
        assert tmp != p and tmp.parent == p.parent
        tmp.write_bytes(b"new")
        assert p.read_bytes() == b"old"  # not visible before the block ends
    assert p.read_bytes() == b"new"
    with pytest.raises(RuntimeError, match="writer failed"):
        with _io.atomic_file(p, unique=unique) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert p.read_bytes() == b"new"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["w.bin"]


# ---------------------------------------------------------------------------- DirLock
def test_dir_lock_refuses_a_second_holder_at_once_and_names_the_first(tmp_path):
    import socket

    d = tmp_path / "run"
    with _io.DirLock(d, what="pretraining run") as lock:
        assert lock.held and lock.lockfile == tmp_path / "run.lock"
        with pytest.raises(_io.LockedError) as e:
            _io.DirLock(d).acquire()  # another open file: conflicts even in this process
        msg = str(e.value)
        assert str(d) in msg and f"pid {os.getpid()} on host {socket.gethostname()}" in msg
        assert "another writer" in msg  # (the second one names its own kind)
    assert not lock.held and not (tmp_path / "run.lock").exists()  # released and removed
    with _io.DirLock(d):  # free again
        pass


def test_dir_lock_creates_missing_parent_directories(tmp_path):
    from bulkformer.data.archs4 import ARCHS4Source
    from bulkformer.data.corpus import build_corpus
    from bulkformer.data.demo import demo_path

    d = tmp_path / "new" / "deeper" / "run"
    with _io.DirLock(d) as lock:
        assert lock.held and lock.lockfile.parent.is_dir()
    # a corpus build into a directory whose parents do not exist yet (``--out new/dir``)
    out = tmp_path / "a" / "b" / "corpus"
    c = build_corpus(ARCHS4Source(demo_path()), out, min_nonzero=9000, progress=False)
    assert (out / "manifest.json").is_file() and len(c) == 85


def test_dir_lock_is_released_when_its_holder_is_killed(tmp_path):
    import signal
    import subprocess
    import sys

    d = tmp_path / "out"
    code = (
        "import sys, time; from bulkformer._io import DirLock\n"
        f"DirLock({str(d)!r}).acquire(); print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(_io.LockedError, match=f"pid {proc.pid} "):
            _io.DirLock(d).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (tmp_path / "out.lock").exists()  # left behind by kill -9, but not held
    with _io.DirLock(d) as lock:  # taken over at once
        assert lock.held


def test_dir_lock_never_locks_a_removed_lock_file(tmp_path, monkeypatch):
    """A writer that opened the lock file just before the holder removed it and released
    ends up locking a deleted file: it must notice and lock the file that is there now."""
    d = tmp_path / "x"
    first = _io.DirLock(d).acquire()
    real_open = os.open
    calls = []

    def racing_open(path, flags, mode=0o777):
        fd = real_open(path, flags, mode)
        if not calls:  # the holder finishes between our open and our flock
            first.release()
        calls.append(path)
        return fd

    monkeypatch.setattr(os, "open", racing_open)
    lock = _io.DirLock(d).acquire()
    monkeypatch.setattr(os, "open", real_open)
    assert len(calls) == 2  # retried on the new file
    st = os.stat(lock.lockfile)
    assert (st.st_ino, st.st_dev) == os.fstat(lock._fd)[1:3]
    with pytest.raises(_io.LockedError):
        _io.DirLock(d).acquire()
    lock.release()


def test_write_atomic_names_the_file_when_the_disk_is_full(tmp_path, monkeypatch):
    import errno

    from bulkformer import _io

    dest = tmp_path / "run.json"
    dest.write_bytes(b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_io.os, "fsync", full)
    with pytest.raises(OSError, match=r"run\.json: cannot write \(No space left on device\)"):
        _io.write_atomic(dest, b"new")
    assert dest.read_bytes() == b"old"  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # no temp file left
