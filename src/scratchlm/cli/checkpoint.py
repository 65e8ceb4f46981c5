"""``scratchlm checkpoint ...``: inspect and verify checkpoints and run directories."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scratchlm.checkpoint import (
    CheckpointManager,
    format_report,
    inspect_checkpoint,
    read_manifest,
    verify_checkpoint,
)
from scratchlm.checkpoint.files import MANIFEST
from scratchlm.checkpoint.manager import CHECKPOINTS
from scratchlm.errors import CheckpointError

FMT = argparse.RawDescriptionHelpFormatter


def _refuse_directory_of_runs(path: Path, action: str) -> None:
    """CheckpointError naming the runs inside ``path`` when it is no checkpoint and no run
    directory but holds runs: ``runs/default`` holds ``pretrain`` and ``sft``."""
    if not path.is_dir() or (path / MANIFEST).exists() or (path / CHECKPOINTS).is_dir():
        return
    runs = sorted(p for p in path.iterdir() if (p / CHECKPOINTS).is_dir())
    if runs:
        names = ", ".join(p.name for p in runs)
        commands = "; ".join(f"scratchlm checkpoint {action} {p}" for p in runs)
        raise CheckpointError(
            f"{path} is not a checkpoint but a directory of runs ({names}): "
            f"{action} each of them: {commands}"
        )


def _checkpoint_inspect(args: argparse.Namespace) -> int:
    _refuse_directory_of_runs(Path(args.path), "inspect")
    info = inspect_checkpoint(args.path)
    print(json.dumps(info, indent=2, ensure_ascii=False) if args.json else format_report(info))
    return 0


def _checkpoint_verify(args: argparse.Namespace) -> int:
    path = Path(args.path)
    _refuse_directory_of_runs(path, "verify")
    run_dir = path.parent if path.name == CHECKPOINTS and path.is_dir() else path
    if (path / MANIFEST).exists() or not (run_dir / CHECKPOINTS).is_dir():
        verify_checkpoint(path)  # also the error for a path that is neither
        print(f"ok: {len(read_manifest(path))} files verified in {path}")
        return 0
    manager = CheckpointManager(run_dir)
    checkpoints = manager.list()
    if not checkpoints:
        raise CheckpointError(f"run directory {manager.run_dir} has no checkpoints")
    bad = 0
    for folder in checkpoints:
        try:
            verify_checkpoint(folder)
        except CheckpointError as e:  # reported here, counted, and raised below
            bad += 1
            print(f"BAD: {folder.name}: {e}")
            continue
        print(f"ok: {folder.name}: {len(read_manifest(folder))} files verified")
    if bad:
        raise CheckpointError(
            f"{bad} of {len(checkpoints)} checkpoints in {manager.dir} failed verification"
        )
    return 0


def checkpoint_parser(ckpt: argparse.ArgumentParser) -> None:
    csub = ckpt.add_subparsers(dest="checkpoint_command", required=True, metavar="ACTION")

    p = csub.add_parser(
        "inspect",
        help="config, step, progress and tensor statistics of a checkpoint",
        description="Print a checkpoint's model config, step, tokens seen, losses, files, "
        "parameter count and per-tensor statistics (shape, dtype, mean, std, min, max, "
        "non-finite values). A run directory shows its latest valid checkpoint.",
        epilog="example:\n  scratchlm checkpoint inspect runs/tiny\n"
        "  scratchlm checkpoint inspect runs/tiny/checkpoints/step_00001000 --json",
        formatter_class=FMT,
    )
    p.add_argument("path", help="a checkpoint directory or a run directory")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_checkpoint_inspect)

    p = csub.add_parser(
        "verify",
        help="check every file against the checkpoint's manifest",
        description="Check the size and SHA-256 of every file a checkpoint's manifest lists. "
        "For a run directory, check every checkpoint and report each. Exits 2 naming the "
        "missing, truncated or corrupted file when a check fails.",
        epilog="example:\n  scratchlm checkpoint verify runs/tiny/checkpoints/step_00001000\n"
        "  scratchlm checkpoint verify runs/tiny",
        formatter_class=FMT,
    )
    p.add_argument("path", help="a checkpoint directory or a run directory")
    p.set_defaults(func=_checkpoint_verify)


PARSERS = {"checkpoint": checkpoint_parser}
