"""scripts/setup.sh says what it installs and why it takes time, and lets pip show its
progress (no -q): run against a stand-in .venv whose pip only records its arguments."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAKE_PYTHON = """#!/usr/bin/env bash
# pip records its arguments; torch imports once pip has "installed" it; the rest is Python.
here="$(dirname "$0")"
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  echo "pip $*" >> "$here/pip.log"
  case "$*" in *torch==*) touch "$here/torch-installed";; esac
  exit 0
fi
if [ "$1" = "-c" ] && [ "$2" = "import torch" ]; then [ -e "$here/torch-installed" ]; exit; fi
exec {python} "$@"
"""


def project_copy(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", project / "scripts" / "setup.sh")
    shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
    venv_bin = project / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    fake = venv_bin / "python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    return project


def setup(project: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "scripts/setup.sh", "fast"],
        cwd=project,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
        timeout=60,
        check=False,
    )


def test_each_install_is_announced_and_shows_pip_progress(tmp_path):
    project = project_copy(tmp_path)
    done = setup(project)
    assert done.returncode == 0, done.stderr
    said = done.stderr.splitlines()
    assert said[0].startswith("setup: installing torch==2.13.0 into .venv") and "minutes" in said[0]
    assert said[1].startswith("setup: installing scratchlm[fast] and its dependencies")
    assert said[-1] == "setup: done"
    calls = (project / ".venv" / "bin" / "pip.log").read_text().splitlines()
    assert len(calls) == 2 and "torch==2.13.0" in calls[0] and "-e .[fast]" in calls[1]
    assert not any(" -q" in call for call in calls)  # pip's own progress is shown

    again = setup(project)  # nothing changed: nothing to install
    assert again.returncode == 0 and "setup: .venv is up to date" in again.stderr
    assert (project / ".venv" / "bin" / "pip.log").read_text().splitlines() == calls
