"""Writing files and folders so that a crash never leaves half of one behind.

A file is written under a temporary name in the same folder, then renamed over the
target (a rename within one file system is atomic). A folder is built the same way,
under a temporary name beside the target, and renamed into place once complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from scratchlm.errors import OutputExistsError


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_dir_atomically(
    out_dir: str | os.PathLike, fill: Callable[[Path], None], *, force: bool = False
) -> Path:
    """Create ``out_dir`` by calling ``fill(tmp_dir)`` on a fresh temporary folder and
    renaming it into place. An existing ``out_dir`` (file or folder) is refused unless
    ``force``, and then replaced only once the new folder is complete."""
    out = Path(out_dir)
    if out.exists() and not force:
        raise OutputExistsError(f"output path {out} exists: choose another or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        fill(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
