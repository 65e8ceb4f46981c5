"""``scratchlm model ...``: inspect model presets."""

from __future__ import annotations

import argparse
import json

import torch

from scratchlm.config import PRESETS, preset
from scratchlm.model import TransformerLM

FMT = argparse.RawDescriptionHelpFormatter


def _model_info(args: argparse.Namespace) -> int:
    overrides = {"vocab_size": args.vocab_size} if args.vocab_size else {}
    config = preset(args.preset, **overrides)
    with torch.device("meta"):  # count parameters without allocating memory for them
        model = TransformerLM(config)
    info = {
        "preset": args.preset,
        "parameters": model.num_parameters(),
        "non_embedding_parameters": model.num_parameters(non_embedding=True),
        "training_flops_per_token": model.flops_per_token(training=True),
        "config": config.resolved().to_dict(),  # derived values as numbers
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(
        f"preset {args.preset}: {info['parameters'] / 1e6:.2f}M parameters, "
        f"{info['non_embedding_parameters'] / 1e6:.2f}M non-embedding"
    )
    print(
        f"training FLOPs per token (context {config.context_length}): "
        f"{info['training_flops_per_token'] / 1e6:.1f}M"
    )
    for key, value in info["config"].items():
        print(f"  {key}: {value}")
    return 0


def model_parser(model: argparse.ArgumentParser) -> None:
    msub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    p = msub.add_parser(
        "info",
        help="configuration and parameter counts of a preset",
        description="Print a preset's configuration, parameter counts and FLOPs per token.",
        epilog="example:\n  scratchlm model info small --vocab-size 8192",
        formatter_class=FMT,
    )

    p.add_argument("preset", choices=list(PRESETS), help="preset name")
    p.add_argument("--vocab-size", type=int, help="override the preset's vocabulary size")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_model_info)


PARSERS = {"model": model_parser}
