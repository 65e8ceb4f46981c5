"""Where a report was made: the code's git commit, the machine, the libraries.

A run's metrics do not record the machine it trained on, so these facts describe the
machine and checkout that made the report (usually the same, at the end of the default
run); the report says so.
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from scratchlm import __version__

# git answers in milliseconds; a hung network file system must not hang the report.
GIT_TIMEOUT_S = 10


@dataclass
class Environment:
    """The machine and code a report was made with (``None``: not known here)."""

    scratchlm_version: str
    git_commit: str | None  # None outside a git checkout (an installed package)
    git_dirty: bool | None  # uncommitted changes to tracked files
    python: str
    torch: str
    platform: str
    cpu: str | None
    cpu_count: int | None
    torch_threads: int
    gpu: str | None  # None: no CUDA device


def _git(folder: Path, *args: str) -> str | None:
    """stdout of ``git -C folder ARGS``, or None when git or the checkout is not there."""
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(folder: Path) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout holding ``folder``; ``(None, None)``
    outside one. Dirty: a tracked file differs from the commit (untracked files do not
    count: run outputs often live inside the checkout)."""
    commit = _git(folder, "rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    return commit.strip(), None if status is None else bool(status.strip())


def cpu_model() -> str | None:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else platform's answer."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: platform.processor() below
    return platform.processor() or None


def collect_environment() -> Environment:
    """The environment of this process (reads /proc/cpuinfo and asks git)."""
    commit, dirty = git_state(Path(__file__).resolve().parent)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return Environment(
        scratchlm_version=__version__,
        git_commit=commit,
        git_dirty=dirty,
        python=platform.python_version(),
        torch=torch.__version__,
        platform=platform.platform(),
        cpu=cpu_model(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        gpu=gpu,
    )
