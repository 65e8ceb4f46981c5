"""The files of a checkpoint directory: names, durable writes, the manifest and its check.

Every file is fsync'ed before the directory holding it is renamed into place, and the
manifest lists the SHA-256 and size of every other file, so a reader can tell a complete
checkpoint from a truncated or corrupted one without trusting the writer to have finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import Tensor

from scratchlm.atomic import atomic_write_bytes, naming_write_errors, new_file_mode
from scratchlm.errors import CheckpointError

FORMAT_VERSION = 1

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state"
OPTIMIZER_TENSORS = f"{TRAINER_STATE}/optimizer.safetensors"
OPTIMIZER_JSON = f"{TRAINER_STATE}/optimizer.json"
STATE_JSON = f"{TRAINER_STATE}/state.json"
STATE_TENSORS = f"{TRAINER_STATE}/tensors.safetensors"
REQUIRED = (CONFIG, WEIGHTS)  # a manifest that does not list these is not a checkpoint

_CHUNK = 1 << 20


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in ``folder`` durable (POSIX; Windows cannot open a
    directory, and its renames need no separate flush)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably: a temporary file in the
    same folder is written and fsync'ed, renamed over ``path``, and the folder fsync'ed.
    After a crash ``path`` holds either the old or the new content, never a mix. A
    failed write is a WriteError naming the file and the cause."""
    with naming_write_errors(path.name, path.parent):
        atomic_write_bytes(path, data)
        fsync_dir(path.parent)


def save_tensors(
    tensors: dict[str, Tensor], file: Path, metadata: dict[str, str] | None = None
) -> None:
    """safetensors' ``save_file``, failing with an OSError that carries the errno (it
    reports a full disk as SafetensorError text), and leaving the file the mode of any
    new file (it writes through a private 0600 temporary)."""
    try:
        save_file(tensors, file, metadata=metadata)
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        number = int(code[1])
        raise OSError(number, os.strerror(number), str(file)) from e
    os.chmod(file, new_file_mode(file.parent))


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON (the caller fsyncs the whole folder later)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file; CheckpointError naming it when it is missing or damaged."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: {what} cannot be read") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {what} {path}: {e}") from None


def _hash_and_sync(file: Path) -> tuple[str, int]:
    """SHA-256 and size of ``file``, fsync'ing it on the way (r+b: Windows needs write
    access to flush a file)."""
    digest = hashlib.sha256()
    size = 0
    with open(file, "r+b") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        os.fsync(f.fileno())
    return digest.hexdigest(), size


def write_manifest(folder: Path) -> int:
    """Hash and fsync every file under ``folder``, then write ``manifest.json`` listing
    them and fsync the folders. Returns the number of files listed."""
    files: dict[str, dict[str, Any]] = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = file.relative_to(folder).as_posix()
        if name == MANIFEST:
            continue
        sha, size = _hash_and_sync(file)
        files[name] = {"sha256": sha, "size": size}
    manifest = {"format_version": FORMAT_VERSION, "files": files}
    with open(folder / MANIFEST, "w", encoding="utf-8") as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    for sub in sorted({(folder / n).parent for n in files}, reverse=True):
        fsync_dir(sub)
    fsync_dir(folder)
    return len(files)


def check_format_version(version: Any, file: Path) -> None:
    """CheckpointError unless ``version`` is the one this scratchlm reads."""
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{file} has checkpoint format version {version!r}; this scratchlm reads version "
            f"{FORMAT_VERSION}: use the scratchlm version that wrote it"
        )


def read_manifest(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The ``files`` table of a checkpoint's manifest: relative path -> {sha256, size}.
    CheckpointError when the manifest is missing, unreadable or of another version."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a checkpoint directory")
    file = folder / MANIFEST
    if not file.is_file():
        raise CheckpointError(
            f"{folder} has no {MANIFEST}: not a scratchlm checkpoint, or one whose writing "
            "did not finish"
        )
    data = read_json(file, "the checkpoint manifest")
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} is damaged: expected a JSON object")
    check_format_version(data.get("format_version"), file)
    files = data.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("size"), int)
        for v in files.values()
    ):
        raise CheckpointError(f"{file} is damaged: 'files' must map names to sha256 and size")
    for name in files:
        # A manifest names files inside the checkpoint only; anything else is damage
        # or a hostile file pointing the reader elsewhere.
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or not parts:
            raise CheckpointError(f"{file} lists {name!r}, which is not inside the checkpoint")
    missing = [n for n in REQUIRED if n not in files]
    if missing:
        raise CheckpointError(f"{file} does not list {', '.join(missing)}: not a checkpoint")
    return files


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Check every file the manifest lists, in order; CheckpointError naming the first
    one that is missing, truncated (size differs) or corrupted (SHA-256 differs), or a
    missing, unreadable or unknown-version manifest."""
    folder = Path(path)
    for name, entry in read_manifest(folder).items():
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {folder} is missing file {name}")
        size = file.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(
                f"checkpoint {folder}: file {name} is truncated or altered "
                f"({size} bytes, the manifest says {entry['size']})"
            )
        digest = hashlib.sha256()
        with open(file, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != entry["sha256"]:
            raise CheckpointError(
                f"checkpoint {folder}: file {name} is corrupted (SHA-256 does not match "
                "the manifest)"
            )
