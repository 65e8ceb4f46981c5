"""``scratchlm export hf|gguf`` and ``scratchlm import hf|gguf``: checkpoints to and from
Hugging Face transformers folders and GGUF files (llama.cpp, Ollama, LM Studio)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scratchlm.checkpoint import load_model, resolve_checkpoint, save_checkpoint
from scratchlm.errors import CheckpointError, OutputExistsError
from scratchlm.export import GGUF_DTYPES, check_gguf_dtype, from_gguf, from_hf, to_gguf, to_hf

FMT = argparse.RawDescriptionHelpFormatter


def _refuse_existing(out: str, force: bool) -> None:
    """Fail before any work is done, not after loading a model."""
    if Path(out).exists() and not force:
        raise OutputExistsError(f"output path {out} exists: choose another or pass --force")


def _load_for_export(args: argparse.Namespace, out: str, what: str) -> tuple[Any, Any]:
    """The model and tokenizer of ``args.checkpoint``, once ``out`` is known to be free."""
    _refuse_existing(out, args.force)
    folder = resolve_checkpoint(args.checkpoint)
    print(f"loading {folder}")
    model, tokenizer = load_model(folder)
    if tokenizer is None:
        raise CheckpointError(
            f"checkpoint {folder} has no tokenizer.json, and {what} needs one: save the "
            "checkpoint with its tokenizer"
        )
    return model, tokenizer


def _export_hf(args: argparse.Namespace) -> int:
    model, tokenizer = _load_for_export(args, args.out_dir, "a Hugging Face folder")
    out = to_hf(model, tokenizer, args.out_dir, force=args.force)
    print(f"wrote Hugging Face folder {out}")
    return 0


def _export_gguf(args: argparse.Namespace) -> int:
    check_gguf_dtype(args.dtype)
    model, tokenizer = _load_for_export(args, args.out_file, "a GGUF file")
    out = to_gguf(model, tokenizer, args.out_file, dtype=args.dtype, force=args.force)
    print(f"wrote GGUF file {out} ({args.dtype}, {out.stat().st_size:,} bytes)")
    return 0


def _import(args: argparse.Namespace, source: str, read: Callable[[str], tuple]) -> int:
    """Read ``source`` with ``read`` (from_hf, from_gguf) and save it as a checkpoint."""
    _refuse_existing(args.out_checkpoint, args.force)
    print(f"loading {source}")
    model, tokenizer = read(source)
    out = save_checkpoint(
        model, None, 0, args.out_checkpoint, tokenizer=tokenizer, force=args.force
    )
    print(f"wrote checkpoint {out} ({model.num_parameters():,} parameters)")
    return 0


def _import_hf(args: argparse.Namespace) -> int:
    return _import(args, args.hf_dir, from_hf)


def _import_gguf(args: argparse.Namespace) -> int:
    return _import(args, args.gguf_file, from_gguf)


def export_parser(exp: argparse.ArgumentParser) -> None:
    esub = exp.add_subparsers(dest="export_command", required=True, metavar="FORMAT")
    p = esub.add_parser(
        "hf",
        help="a Hugging Face transformers folder",
        description="Write a checkpoint (or a run directory's latest valid checkpoint) as a "
        "Hugging Face transformers folder: Llama for position=rope, GPT-2 for "
        "position=learned. The checkpoint must hold a byte-level BPE tokenizer.",
        epilog="example:\n  scratchlm export hf runs/tiny runs/tiny-hf",
        formatter_class=FMT,
    )
    p.add_argument("checkpoint", help="a checkpoint directory or a run directory")
    p.add_argument("out_dir", help="output folder")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=_export_hf)

    p = esub.add_parser(
        "gguf",
        help="a GGUF file for llama.cpp, Ollama and LM Studio",
        description="Write a checkpoint (or a run directory's latest valid checkpoint) as one "
        "GGUF file: llama for position=rope, gpt2 for position=learned, with the tokenizer, "
        "its pre-tokenizer name and, for a chat model, the chat template and <|end|> as the "
        "end of a turn. 2-D weight matrices are stored as --dtype; norms stay f32.",
        epilog="example:\n  scratchlm export gguf runs/default/sft model.gguf --dtype q8_0",
        formatter_class=FMT,
    )
    p.add_argument("checkpoint", help="a checkpoint directory or a run directory")
    p.add_argument("out_file", help="output .gguf file")
    p.add_argument(
        "--dtype", default="f32", help=f"weight type: {', '.join(GGUF_DTYPES)} (default: f32)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_export_gguf)


def import_parser(imp: argparse.ArgumentParser) -> None:
    isub = imp.add_subparsers(dest="import_command", required=True, metavar="FORMAT")
    p = isub.add_parser(
        "hf",
        help="a local Hugging Face transformers folder",
        description="Read a local Hugging Face Llama- or GPT-2-architecture folder "
        "(safetensors weights and a tokenizer) and save it as a scratchlm checkpoint at "
        "step 0, without optimizer state.",
        epilog="example:\n  scratchlm import hf ~/models/tiny-llama runs/imported/step_00000000",
        formatter_class=FMT,
    )
    p.add_argument("hf_dir", help="a Hugging Face model folder")
    p.add_argument("out_checkpoint", help="output checkpoint directory")
    p.add_argument("--force", action="store_true", help="replace an existing checkpoint")
    p.set_defaults(func=_import_hf)

    p = isub.add_parser(
        "gguf",
        help="a GGUF file (llama or gpt2; f32, f16 or q8_0)",
        description="Read a GGUF file of architecture llama or gpt2 with a byte-level BPE "
        "tokenizer (as `scratchlm export gguf` writes) and save it as a scratchlm checkpoint "
        "at step 0. f32 and f16 weights are read exactly, q8_0 dequantised to f32.",
        epilog="example:\n  scratchlm import gguf model.gguf runs/imported/step_00000000",
        formatter_class=FMT,
    )
    p.add_argument("gguf_file", help="a .gguf file")
    p.add_argument("out_checkpoint", help="output checkpoint directory")
    p.add_argument("--force", action="store_true", help="replace an existing checkpoint")
    p.set_defaults(func=_import_gguf)


PARSERS = {"export": export_parser, "import": import_parser}
