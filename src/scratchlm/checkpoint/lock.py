"""The run lock: one writer per run directory.

Every command that writes a run (train, sft, a resume, the default pipeline) holds an
exclusive lock on ``RUN/.lock`` while it runs. A second writer is refused before it reads
or writes anything else, with the holder's process id and command, which the holder
writes into the lock file. The lock is the kernel's (``flock``), tied to the open file:
it goes away with the process however that ends, so even a SIGKILL leaves no stale lock,
and the file left behind means nothing by itself. Readers (chat, generate, inspect,
export, plot) never take it: a checkpoint is renamed into place whole, so a reader sees
the old one or the new one.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

from scratchlm.errors import ConfigError, ScratchLMError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not protected against a 2nd writer
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"

log = logging.getLogger(__name__)


class RunInUseError(ScratchLMError):
    """Another live process is writing the run directory."""


class RunLock:
    """The exclusive lock on one run directory, held from ``acquire`` to ``release`` (or
    the end of the process). Usable as a context manager, which creates the directory."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, create: bool = True) -> bool:
        """Take the lock; True once held. With ``create=False`` a run directory that does
        not exist yet is left alone and False returned (there is nothing to protect yet).
        RunInUseError, naming the holder, when another process holds it."""
        if self._fd is not None:
            return True
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"the run directory {self.run_dir} is a file: choose another --out")
        if not create and not self.run_dir.is_dir():
            return False
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(
                f"cannot write in the run directory {self.run_dir} ({e.strerror}): choose "
                "another --out"
            ) from None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.lseek(fd, 0, os.SEEK_SET)
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip()
            os.close(fd)
            raise RunInUseError(
                f"{self.run_dir} is being written by {holder or 'another process'}: wait for "
                "it to finish (or stop it), or choose another --out"
            ) from None
        except OSError as e:  # a file system without flock (some network mounts)
            log.warning("cannot lock %s (%s): nothing stops a second writer", self.run_dir, e)
        except BaseException:
            os.close(fd)
            raise
        # Who holds it, for the message a second writer gets.
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"process {os.getpid()} ({_command()})\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        """Let the next writer in (closing the file releases the kernel's lock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _command() -> str:
    """This process's command line, as a user would have typed it (shortened)."""
    argv = list(sys.argv) or ["python"]
    if Path(argv[0]).name in ("scratchlm", "__main__.py"):  # the script, or python -m
        argv[0] = "scratchlm"
    text = shlex.join(argv)
    return text if len(text) <= 200 else text[:197] + "..."
