"""What a training run records: the JSONL metrics log (and, optionally, TensorBoard).
The console progress line, tokens per second and MFU are in ``train/progress.py``.

``RUN_DIR/metrics.jsonl`` holds one JSON object per line, each with a ``kind``:
``train`` (step, tokens, time, loss, lr, grad_norm, tokens_per_s, mfu), ``val`` (step,
tokens, time, val_loss, val_ppl, val_bpb), ``sample`` (step, prompt, text) and ``event``
(step, message). The file is only ever appended to, one flushed line per record, so a
crash loses at most the line being written; after a resume, ``truncate_after`` drops the
records of steps the restored checkpoint never saw, and the file reads as one run again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from scratchlm.atomic import atomic_write_bytes
from scratchlm.errors import ConfigError, DataError

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def metrics_path(run_dir_or_file: str | os.PathLike) -> Path:
    """``RUN_DIR/metrics.jsonl`` for a run directory; a file path is returned as given."""
    path = Path(run_dir_or_file)
    return path / METRICS_FILE if path.is_dir() else path


def _parse_record(raw: bytes) -> dict[str, Any] | None:
    """The JSON object on one line, or None when the line is not one."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _records(path: Path, data: bytes) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """``(raw line, record)`` for every record in ``data``, the bytes of ``path``.

    Split on b"\\n" only: str.splitlines would also split at U+2028 and friends, which
    may appear unescaped inside a sample's text. A last line without its newline is kept
    only if it is a whole record: otherwise it is what a crash cut short, and ignored.
    """
    *lines, tail = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        record = _parse_record(raw)
        if record is None:
            raise DataError(f"{path}, line {number}: not a JSON object; fix or delete that line")
        yield raw, record
    record = _parse_record(tail) if tail.strip() else None
    if record is not None:
        yield tail, record


def read_metrics(run_dir_or_file: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a run, oldest first.

    Accepts the run directory or the metrics file. A run directory without a metrics
    file yet gives ``[]``; a path that does not exist is a DataError.
    """
    path = metrics_path(run_dir_or_file)
    if not path.exists():
        if path.parent.is_dir() and path.name == METRICS_FILE:
            return []
        raise DataError(
            f"{run_dir_or_file} does not exist: give a run directory or its {METRICS_FILE}"
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from e
    return [record for _, record in _records(path, data)]


def _end_on_newline(path: Path) -> None:
    """Make an existing metrics file end with a newline, so that the next record starts
    a line of its own. A last line a crash cut short is cut off (it holds no whole
    record); a whole record that only lacks its newline gets one."""
    data = path.read_bytes()  # once per open; truncate_after reads it all too
    if not data or data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1  # where the last line begins
    with open(path, "r+b") as f:
        if _parse_record(data[start:]) is not None:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            f.truncate(start)


def _json_default(obj: Any) -> Any:
    """Let 0-d tensors and numpy scalars into a record as plain Python numbers."""
    if getattr(obj, "ndim", None) == 0 and callable(getattr(obj, "item", None)):
        return obj.item()  # .item() on a GPU tensor waits for the GPU: log sparingly
    raise TypeError(f"a metrics record cannot hold {type(obj).__name__}: {obj!r}")


class MetricsLog:
    """Appends records to ``RUN_DIR/metrics.jsonl`` (and optionally TensorBoard).

    ``log(record)`` writes one JSON line and flushes it, so the file is current even if
    the process dies. Values are JSON numbers, strings, lists, dicts or null; NaN and
    infinity are written as Python's json writes them (``NaN``, ``Infinity``), which
    ``read_metrics`` reads back, because a diverged loss is worth recording as it is.

    With ``tensorboard=True`` the numbers of ``train`` and ``val`` records also go to
    ``RUN_DIR/tensorboard`` as scalars (``train/loss``, ``val/val_bpb`` ...), samples and
    events as text. That needs the optional ``tensorboard`` package.
    """

    def __init__(self, run_dir: str | os.PathLike, *, tensorboard: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self._writer: Any = None
        if tensorboard:  # first, so that a missing package fails before any file exists
            self._writer = _summary_writer(self.run_dir / TENSORBOARD_DIR)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO | None = self._open()

    def _open(self) -> BinaryIO:
        if self.path.exists():
            _end_on_newline(self.path)
        return open(self.path, "ab")

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line and flush it."""
        assert isinstance(record, dict), f"a metrics record is a dict, got {type(record)}"
        assert self._file is not None, "MetricsLog.log after close()"
        line = json.dumps(record, ensure_ascii=False, default=_json_default)
        # A lone surrogate (text cut mid-character) cannot be UTF-8; "\udc80" written as
        # that escape is still valid JSON and reads back as the same string.
        self._file.write(line.encode("utf-8", errors="backslashreplace") + b"\n")
        self._file.flush()
        if self._writer is not None:
            _write_tensorboard(self._writer, record)

    def truncate_after(self, step: int) -> None:
        """Keep only records with ``step <= step`` (and any without a step), rewriting
        the file atomically: a crash leaves either the old file or the new one."""
        if self._file is not None:
            self._file.close()
            self._file = None  # until reopened: a failed rewrite leaves the log closed
        if self.path.exists():
            kept = []
            for raw, record in _records(self.path, self.path.read_bytes()):
                if record.get("step") is None or record["step"] <= step:
                    kept.append(raw + b"\n")
            atomic_write_bytes(self.path, b"".join(kept))
        self._file = self._open()
        if self._writer is not None:
            # TensorBoard drops its own events from purge_step on when a writer opens.
            self._writer.close()
            self._writer = _summary_writer(self.run_dir / TENSORBOARD_DIR, purge_step=step + 1)

    def close(self) -> None:
        """Close the file (and the TensorBoard writer); calling it again does nothing."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _summary_writer(log_dir: str | os.PathLike, purge_step: int | None = None) -> Any:
    try:  # deferred: tensorboard is an optional extra, imported only when asked for
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ConfigError(
            "TensorBoard logging needs the tensorboard package: "
            "pip install 'scratchlm[tensorboard]' (or turn TensorBoard logging off)"
        ) from e
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def _write_tensorboard(writer: Any, record: dict[str, Any]) -> None:
    kind, step = record.get("kind"), record.get("step")
    if kind in ("train", "val"):
        for key, value in record.items():
            if key in ("kind", "step") or isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                writer.add_scalar(f"{kind}/{key}", value, global_step=step)
    elif kind == "sample":
        writer.add_text("sample", f"{record.get('prompt', '')}{record.get('text', '')}", step)
    elif kind == "event":
        writer.add_text("event", str(record.get("message", "")), step)
