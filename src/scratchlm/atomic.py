"""Writing files and folders so that a crash never leaves half of one behind.

A file is written under a temporary name in the same folder, then renamed over the
target (a rename within one file system is atomic). A folder is built the same way,
under a temporary name beside the target, and renamed into place once complete.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from scratchlm.errors import OutputExistsError, WriteError

# Causes for which the space left is worth telling (EDQUOT is missing on some systems).
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _fresh_file(path.parent, f".{path.name}.", ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points at it
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
    tmp = _fresh_dir(out.parent, f".{out.name}.", ".tmp")
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


def _fresh_dir(parent: Path, prefix: str, suffix: str) -> Path:
    """A new, empty directory with a unique name. Unlike ``tempfile.mkdtemp`` (mode 0700,
    private) it gets the usual permissions from the umask, which it keeps once renamed."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"cannot create a temporary directory in {parent}")


def _fresh_file(parent: Path, prefix: str, suffix: str) -> tuple[int, Path]:
    """A new, empty file opened for writing, with a unique name and (unlike
    ``tempfile.mkstemp``, mode 0600) the usual permissions from the umask."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file in {parent}")


def new_file_mode(folder: str | os.PathLike) -> int:
    """The permission bits a new file in ``folder`` gets (0o666 less the umask), found by
    creating one: ``os.umask`` can only be read by changing it, for every thread."""
    fd, probe = _fresh_file(Path(folder), ".mode.", ".tmp")
    try:
        return os.fstat(fd).st_mode & 0o777
    finally:
        os.close(fd)
        os.unlink(probe)


@contextlib.contextmanager
def naming_write_errors(
    what: str, where: str | os.PathLike, *, needed: int | None = None
) -> Iterator[None]:
    """Turn an OSError raised inside into a WriteError naming ``what`` was written (e.g.
    "the checkpoint step_00000500"), the folder ``where`` and the cause; for a full disk
    also the ``needed`` bytes and the space left."""
    try:
        yield
    except OSError as e:
        raise WriteError(describe_write_error(e, what, where, needed=needed)) from e


def describe_write_error(
    error: OSError, what: str, where: str | os.PathLike, *, needed: int | None = None
) -> str:
    """One line for a failed write: "no space left on device: 1.2 GB needed for the
    checkpoint step_00000500 in runs/x/checkpoints (0.3 GB free); ..." or
    "input/output error: cannot write ... (the file)"."""
    cause = error.strerror or str(error)
    cause = cause[:1].lower() + cause[1:]
    if error.errno in _FULL:
        need = f"{human_bytes(needed)} needed for {what}" if needed else f"cannot write {what}"
        free = _free_space(Path(where))
        left = f" ({human_bytes(free)} free)" if free is not None else ""
        return f"{cause}: {need} in {where}{left}; free some space or write elsewhere"
    file = f" ({error.filename})" if error.filename else ""
    return f"{cause}: cannot write {what} in {where}{file}"


def human_bytes(n: float) -> str:
    """``1234567`` -> ``"1.2 MB"`` (powers of 1000, as disks are sold)."""
    if n < 1000:
        return f"{n:.0f} bytes"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} TB"


def _free_space(folder: Path) -> int | None:
    """Bytes free on the file system of ``folder`` (or of its nearest existing parent)."""
    for candidate in (folder, *folder.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None
