"""Atomic writes: all or nothing, with the permissions an ordinary write would give."""

from __future__ import annotations

import os
import stat

import pytest

from scratchlm.atomic import atomic_write_text, write_dir_atomically
from scratchlm.errors import OutputExistsError


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_and_folders_get_the_umask_permissions(tmp_path, umask_022):
    atomic_write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert _mode(tmp_path / "a.txt") == 0o644  # not tempfile's private 0600

    def fill(tmp):
        (tmp / "inside.txt").write_text("x")
        atomic_write_text(tmp / "atomic.txt", "y")

    out = write_dir_atomically(tmp_path / "out", fill)
    assert _mode(out) == 0o755  # not mkdtemp's private 0700
    assert _mode(out / "atomic.txt") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "out"]


def test_a_failing_fill_leaves_nothing_and_keeps_the_old_folder(tmp_path):
    write_dir_atomically(tmp_path / "out", lambda tmp: (tmp / "old.txt").write_text("old"))

    def broken(tmp):
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_dir_atomically(tmp_path / "out", broken, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["old.txt"]
    with pytest.raises(OutputExistsError):
        write_dir_atomically(tmp_path / "out", lambda tmp: None)


def test_a_failing_file_write_leaves_the_old_file(tmp_path, monkeypatch):
    atomic_write_text(tmp_path / "a.txt", "old")

    def no_replace(src, dst):
        raise OSError("no space")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(OSError, match="no space"):
        atomic_write_text(tmp_path / "a.txt", "new")
    assert (tmp_path / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
