"""Machinery shared by the benchmark scripts (``bench_tokenizer.py``, ``bench_model.py``).

- :func:`measure` runs one contender, a *task* function of a bench script, in a fresh
  Python process and returns a :class:`Run`: the task's result, the sections it timed
  with a :class:`Clock`, and the child's own peak RSS.
- :class:`Table` is a result table, printed as aligned text or written as Markdown;
  :class:`Report` prints each table as it is done and writes them all at the end.
- Small helpers: number formatting (:func:`ratio`), machine facts (:func:`cores`,
  :func:`load_average`, :func:`scratchlm_version`, ...).

The scripts import this module as ``harness`` (``bench/`` is on ``sys.path`` when a script
in it runs). The child side is this file run as a script: ``python bench/harness.py
--child SPEC OUT`` loads the task's file with importlib, calls the task and writes the
:class:`Run` as JSON to ``OUT``. Nothing here imports torch or the tools being measured,
so a child's peak RSS is that of the task.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


# --------------------------------------------------------------------------------------
# Running one contender in a fresh process
# --------------------------------------------------------------------------------------


class Clock:
    """Times named sections of a child's work; everything outside them is setup.

    A task that takes a ``clock`` parameter gets one from the child and times its work
    with ``with clock("encode"): ...``; a section entered again adds to its total."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.setup_rss_mib: float | None = None  # peak RSS when the first section starts

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.setup_rss_mib is None:
            self.setup_rss_mib = peak_rss_mib()
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass
class Run:
    """What a child reports: its result, section times (tasks with a clock), and peak
    RSS (MiB) of itself, of itself when its first section started, and of its largest
    child process (such as the worker processes of our trainer); or the error line."""

    result: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: float = 0.0
    setup_rss_mib: float = 0.0
    workers_rss_mib: float = 0.0
    error: str | None = None


def measure(
    task: Callable[..., dict],
    *,
    env: dict[str, str] | None = None,
    threads: int | None = None,
    timeout: float | None = None,
    **kwargs: Any,
) -> Run:
    """Run ``task(**kwargs)`` in a fresh Python process and return what it reported.

    ``task`` is a module-level function of a bench script that returns a JSON-ready
    dict; ``kwargs`` must be JSON-ready too. If it has a ``clock`` parameter it also gets
    a :class:`Clock` (``task(clock, **kwargs)``). ``env`` is added to this process's
    environment for the child. ``threads`` sets ``OMP_NUM_THREADS`` and, in the child,
    ``torch.set_num_threads`` (torch is imported only then). A child still running after
    ``timeout`` seconds is killed. A failed child gives a :class:`Run` whose ``error`` is
    the last line of its output (or the timeout).
    """
    print(f"  ... {task.__name__}({_short(kwargs)})", file=sys.stderr, flush=True)
    child_env = {**os.environ, **(env or {})}
    if threads is not None:
        child_env["OMP_NUM_THREADS"] = str(threads)
    spec = {
        "file": str(Path(inspect.getfile(task)).resolve()),
        "task": task.__name__,
        "threads": threads,
        "kwargs": kwargs,
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        cmd = [sys.executable, str(BENCH / "harness.py"), "--child", json.dumps(spec), str(out)]
        try:
            proc = subprocess.run(
                cmd, env=child_env, cwd=REPO, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return Run(error=f"no result after {timeout:.0f} s (killed)")
        if proc.returncode != 0 or not out.exists():
            lines = (proc.stderr or proc.stdout or f"exit code {proc.returncode}").strip()
            return Run(error=lines.splitlines()[-1][:200])
        return Run(**json.loads(out.read_text()))


def _child_main(spec_json: str, out_path: str) -> None:
    """The child side of :func:`measure`: load the task's file, run the task, write the
    :class:`Run` as JSON to ``out_path``."""
    spec = json.loads(spec_json)
    task = _load_task(spec["file"], spec["task"])
    if spec["threads"] is not None:
        import torch

        torch.set_num_threads(spec["threads"])
    clock = Clock()
    kwargs = spec["kwargs"]
    if "clock" in inspect.signature(task).parameters:
        kwargs = {"clock": clock, **kwargs}
    result = task(**kwargs)
    run = Run(
        result=result,
        seconds=clock.seconds,
        peak_rss_mib=peak_rss_mib(),
        setup_rss_mib=clock.setup_rss_mib or 0.0,
        workers_rss_mib=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,  # KiB
    )
    Path(out_path).write_text(json.dumps(dataclasses.asdict(run)))


def _load_task(file: str, name: str) -> Callable[..., dict]:
    """The function ``name`` of the script ``file``, imported as a module named after the
    file (so its ``if __name__ == "__main__"`` block does not run)."""
    module_name = Path(file).stem
    module_spec = importlib.util.spec_from_file_location(module_name, file)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"cannot load {file}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    module_spec.loader.exec_module(module)
    return getattr(module, name)


def peak_rss_mib() -> float:
    """This process's peak RSS (MiB). Not ``getrusage(RUSAGE_SELF)``: Linux carries the
    parent's peak across fork + exec into that, so every child would report the bench's
    own size; ``VmHWM`` in ``/proc/self/status`` is this process's alone."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def _short(kwargs: dict[str, Any]) -> str:
    """The arguments of a task for the progress line; paths shortened to their name."""
    return ", ".join(f"{k}={Path(v).name if isinstance(v, str) else v}" for k, v in kwargs.items())


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------


@dataclass
class Table:
    """A result table: numeric cells are right-aligned (see :func:`_numeric`), the rest
    left-aligned; ``notes`` follow as bullets, ``details`` as preformatted lines."""

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # preformatted lines after the notes

    def text(self) -> str:
        """The table as aligned plain text, for the terminal."""
        cells = [self.headers, *self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.headers))]

        def line(row: list[str]) -> str:
            first = row[0].ljust(widths[0])
            rest = [
                c.rjust(w) if _numeric(c) else c.ljust(w)
                for c, w in zip(row[1:], widths[1:], strict=True)
            ]
            return "  ".join([first, *rest]).rstrip()

        rule = "  ".join("-" * w for w in widths)
        out = [self.title, "=" * len(self.title), line(self.headers), rule]
        out += [line(row) for row in self.rows]
        out += [f"  * {note}" for note in self.notes]
        out += self.details
        return "\n".join(out)

    def markdown(self) -> str:
        """The table as Markdown; column alignment follows the first row."""

        def line(row: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"

        align = ["---:" if _numeric(c) else "---" for c in (self.rows or [self.headers])[0]]
        out = [f"### {self.title}", "", line(self.headers), "| " + " | ".join(align) + " |"]
        out += [line(row) for row in self.rows]
        if self.notes:
            out += ["", *(f"- {note}" for note in self.notes)]
        if self.details:
            out += ["", "```text", *self.details, "```"]
        return "\n".join(out)


_NUMBER = r"~?\d[\d,]*(\.\d+)?[x%]?"
_NUMERIC = re.compile(rf"{_NUMBER}(-{_NUMBER})?( \(\+[\d,]+\))?")


def _numeric(cell: str) -> bool:
    """Numbers are right-aligned: 1,234  0.74x  ~415  12%  1,201-1,340  57 (+12)."""
    return bool(_NUMERIC.fullmatch(cell.strip()))


class Report:
    """The tables of one bench run: each printed when it is done, all of them written
    as Markdown at the end. The clock of the total bench time starts at creation."""

    def __init__(self) -> None:
        self.tables: list[Table] = []
        self.start = time.perf_counter()

    def show(self, table: Table) -> None:
        """Print ``table`` now and keep it for the Markdown."""
        self.tables.append(table)
        print(table.text(), end="\n\n", flush=True)

    def finish(self, heading: str, markdown: Path | None) -> None:
        """Print the total time and the load average; with ``markdown``, write there a
        ``# heading`` and every table, and say so."""
        total = time.perf_counter() - self.start
        summary = f"Total bench time: {total:,.0f} s; load average at the end: {load_average()}."
        print(summary)
        if markdown:
            markdown.parent.mkdir(parents=True, exist_ok=True)
            body = "\n\n".join(t.markdown() for t in self.tables)
            markdown.write_text(f"# {heading}\n\n{body}\n\n{summary}\n")
            print(f"markdown written to {markdown}")


# --------------------------------------------------------------------------------------
# Formatting and machine facts
# --------------------------------------------------------------------------------------


def num(x: float) -> str:
    """A measured value with the digits that matter: 1,234 / 56.7 / 8.90."""
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}" if x >= 10 else f"{x:.2f}"


def ratio(x: float) -> str:
    """A ratio for a table cell: 0.74x, 12.30x, 816x."""
    return f"{x:.2f}x" if x < 100 else f"{x:,.0f}x"


def common_prefix(a: Sequence, b: Sequence) -> int:
    """How many leading items ``a`` and ``b`` share (where two token lists part)."""
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    return min(len(a), len(b)) if first is None else first


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: 0.41, 1.06, 1.63."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_info() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags, from the first CPU in /proc/cpuinfo."""
    name, flags = "unknown", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and name == "unknown":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    return name, flags


def cores() -> str:
    """Usable and online cores and the CPU model: 2 usable (2 online), AMD EPYC."""
    usable, online = len(os.sched_getaffinity(0)), os.cpu_count()
    return f"{usable} usable ({online} online), {cpu_info()[0]}"


def package_version(package: str) -> str:
    """The installed version of ``package``, or "not installed"."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def scratchlm_version() -> str:
    """scratchlm's version and commit, marked when tracked files are modified:
    0.1.0 @ 7390bd6 (modified)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = " (modified)" if git("status", "--porcelain", "--untracked-files=no") else ""
    return f"{package_version('scratchlm')} @ {commit}{dirty}"


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "--child":
        sys.exit("usage: harness.py --child SPEC_JSON OUT_PATH (run by measure(), not by hand)")
    # Go through the module as the bench scripts import it, so the task's file and this
    # code share one ``harness`` (one Clock class), not this ``__main__`` copy beside it.
    import harness

    harness._child_main(*sys.argv[2:])


def measure_torch(
    task: Callable[..., dict], *, threads: int, timeout: int = 3600, **kwargs: Any
) -> Run:
    """``measure`` of ``task(**kwargs)`` in a fresh process that uses ``threads`` threads
    and an empty torch.compile cache of its own, killed after ``timeout`` seconds."""
    with tempfile.TemporaryDirectory() as inductor_cache:
        env = {"TORCHINDUCTOR_CACHE_DIR": inductor_cache, "TRANSFORMERS_VERBOSITY": "error"}
        return measure(task, env=env, threads=threads, timeout=timeout, **kwargs)


@contextmanager
def time_limit(seconds: int, what: str) -> Iterator[None]:
    """Raise TimeoutError in this (main) thread if the block runs longer than ``seconds``."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"{what} took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
