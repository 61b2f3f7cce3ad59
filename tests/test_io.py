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
