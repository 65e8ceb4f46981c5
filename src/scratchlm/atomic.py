"""Writing files and folders so that a crash never leaves half of one behind.

A file is written under a temporary name in the same folder, then renamed over the
target (a rename within one file system is atomic). A folder is built the same way,
under a temporary name beside the target, and renamed into place once complete.

A process killed while filling a folder leaves its temporary folder behind (as large as
what it was writing). The writer holds a lock (``flock``) on the folder for as long as it
works on it, and the kernel drops that lock when the process dies, so the next write of
the same target can tell such a leftover from one a live process is still filling, and
removes only the former (``remove_stale_temporaries``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from scratchlm.errors import OutputExistsError, WriteError

# Causes for which the space left is worth telling (EDQUOT is missing on some systems).
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}

try:
    import fcntl
except ImportError:  # Windows: leftovers cannot be told from live folders, so none is removed
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


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
    remove_stale_temporaries(out)
    if out.exists() and not force:
        raise OutputExistsError(f"output path {out} exists: choose another or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, owner = _claim_fresh_dir(out.parent, f".{out.name}.", ".tmp")
    try:
        fill(tmp)
        if out.exists():
            old, old_owner = _claim_fresh_dir(out.parent, f".{out.name}.", ".old")
            try:
                os.replace(out, old / out.name)
                os.replace(tmp, out)
                shutil.rmtree(old)
            finally:
                _let_go(old_owner)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _let_go(owner)
    return out


def remove_stale_temporaries(out: str | os.PathLike) -> list[Path]:
    """Delete the temporary folders earlier writes of ``out`` left beside it (named
    ``.NAME.<12 hex digits>.tmp`` or ``.old``) that no live process holds; returns them.
    Nothing else is touched: not other names, not files, not a folder still being filled."""
    out = Path(out)
    if fcntl is None or not out.parent.is_dir():
        return []
    ours = re.compile(re.escape(f".{out.name}.") + r"[0-9a-f]{12}\.(tmp|old)")
    try:
        candidates = sorted(p for p in out.parent.iterdir() if ours.fullmatch(p.name))
    except OSError:  # an unreadable folder: nothing of ours can be found there
        return []
    removed = []
    for path in candidates:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:  # a temporary file, or gone already
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # BlockingIOError: a live process is filling it
                continue
            if not _same_file(path, fd):
                continue  # renamed into place (or replaced) since we opened it
            log.info("removing %s, left behind by an interrupted write", path)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def _claim_fresh_dir(parent: Path, prefix: str, suffix: str) -> tuple[Path, int | None]:
    """A new, empty directory (``_fresh_dir``) and an open descriptor holding its lock
    (None without flock); ``_let_go`` (or the end of the process) releases it."""
    while True:
        path = _fresh_dir(parent, prefix, suffix)
        if fcntl is None:
            return path, None
        # Another process's remove_stale_temporaries may find it between mkdir and flock
        # and delete it: then it is not ours to fill, and a new one is made.
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without flock: the folder is merely unprotected
            return path, fd
        if _same_file(path, fd):
            return path, fd
        os.close(fd)


def _let_go(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _same_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file ``fd`` has open."""
    try:
        here = path.stat()
    except FileNotFoundError:
        return False
    there = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


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
