"""Runs ``scratchlm`` with one fault injected into the writing of a checkpoint (a helper
of test_faults.py, started as a child process; not a test module).

    python fault_runner.py ACTION@STAGE:N [scratchlm arguments...]

The Nth time a checkpoint write reaches STAGE, ACTION happens:

    kill     SIGKILL right after the stage (before it, for "rename"): a power cut or the
             OOM killer, with no chance to clean up
    enospc   the stage's write fails with "no space left on device" instead
    eio      the stage's write fails with an I/O error instead

Stages, in the order a checkpoint is written: ``weights`` (model.safetensors written),
``manifest`` (manifest.json written: the folder is complete), ``rename`` (the folder is
renamed into place), ``renamed`` (just after), ``latest`` (the latest pointer written).
``none`` runs the command unchanged. The faults replace library functions in this process
only: the library itself holds no test hook.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

import scratchlm.checkpoint.files as checkpoint_files
import scratchlm.checkpoint.io as checkpoint_io
from scratchlm.cli import main

ERRORS = {"enospc": errno.ENOSPC, "eio": errno.EIO}


def is_checkpoint_folder(path: Any) -> bool:
    """The temporary name a checkpoint folder is built under (``.step_….tmp``)."""
    name = Path(path).name
    return name.startswith(".step_") and name.endswith(".tmp")


def inject(
    action: str,
    nth: int,
    real: Callable,
    matches: Callable[..., bool],
    *,
    kill_after: bool,
    error: Callable[[int, Any], Exception],
) -> Callable:
    """``real``, except at its nth call whose arguments ``matches``: SIGKILL after (or
    before) the call, or ``error(errno, first argument)`` raised instead of it."""
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        if not matches(*args):
            return real(*args, **kwargs)
        calls += 1
        if calls != nth:
            return real(*args, **kwargs)
        if action in ERRORS:
            raise error(ERRORS[action], args[0])
        if kill_after:
            real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable: SIGKILL cannot be caught")

    return wrapper


def os_error(code: int, path: Any) -> OSError:
    return OSError(code, os.strerror(code), str(path))


def safetensors_error(code: int, path: Any) -> SafetensorError:
    """What safetensors' Rust writer raises: the OS error only as text, without the path."""
    return SafetensorError(
        f"Error while serializing: I/O error: {os.strerror(code)} (os error {code})"
    )


def install(spec: str) -> None:
    """Put the fault ``ACTION@STAGE:N`` in place."""
    if spec == "none":
        return
    action, _, rest = spec.partition("@")
    stage, _, n = rest.partition(":")
    nth = int(n)
    assert action in ("kill", *ERRORS), spec
    if stage == "weights":
        checkpoint_files.save_file = inject(
            action,
            nth,
            checkpoint_files.save_file,
            lambda tensors, file, *a: Path(file).name == "model.safetensors",
            kill_after=True,
            error=safetensors_error,
        )
    elif stage == "manifest":
        checkpoint_io.write_manifest = inject(
            action,
            nth,
            checkpoint_io.write_manifest,
            lambda folder: True,
            kill_after=True,
            error=lambda code, folder: os_error(code, folder / "manifest.json"),
        )
    elif stage in ("rename", "renamed"):
        os.replace = inject(
            action,
            nth,
            os.replace,
            lambda src, dst: is_checkpoint_folder(src),
            kill_after=stage == "renamed",
            error=os_error,
        )
    elif stage == "latest":
        checkpoint_files.atomic_write_bytes = inject(
            action,
            nth,
            checkpoint_files.atomic_write_bytes,
            lambda path, data: Path(path).name == "latest",
            kill_after=True,
            error=os_error,
        )
    else:
        raise AssertionError(f"unknown stage in {spec!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
