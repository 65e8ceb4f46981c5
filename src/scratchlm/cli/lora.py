"""``scratchlm lora merge|export``: a LoRA run's adapters folded into an ordinary
checkpoint, or written in PEFT's format for the Hugging Face ecosystem."""

from __future__ import annotations

import argparse

from scratchlm.tune.lora import export_adapter, merge_run

FMT = argparse.RawDescriptionHelpFormatter

MERGE_EPILOG = """example:
  scratchlm sft --from runs/default/sft --data chats.jsonl --lora r=8,alpha=16 --out runs/lora
  scratchlm lora merge runs/lora runs/lora-merged
  scratchlm chat runs/lora-merged

chat, serve, eval and export also read a LoRA run directly (they merge on loading);
merging once gives a checkpoint any tool, or another sft --from, reads as it is.
"""

EXPORT_EPILOG = """example:
  scratchlm lora export runs/lora adapter --base-hf base-hf
  python -c "from transformers import AutoModelForCausalLM; from peft import PeftModel;
             m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained('base-hf'),
                                           'adapter')"

An sft --lora run writes RUN/adapter itself when it finishes. --base-hf writes the model
the adapters were trained on (with the rows sft added for the chat tokens), which the
adapter needs: the export of the --from checkpoint only fits when it had those tokens.
"""


def _merge(args: argparse.Namespace) -> int:
    out = merge_run(args.run, args.out, force=args.force)
    print(f"wrote checkpoint {out} (adapters merged into the weights)")
    return 0


def _export(args: argparse.Namespace) -> int:
    out = export_adapter(args.run, args.out, base_hf=args.base_hf, force=args.force)
    print(f"wrote PEFT adapter {out}")
    if args.base_hf:
        print(f"wrote Hugging Face folder {args.base_hf} (the base model it adapts)")
    return 0


def lora_parser(p: argparse.ArgumentParser) -> None:
    p.description = "Merge or export the LoRA adapters of an sft --lora run (docs/lora.md)."
    sub = p.add_subparsers(dest="lora_command", required=True, metavar="ACTION")
    m = sub.add_parser(
        "merge",
        help="fold the adapters into the weights: an ordinary checkpoint",
        description="Fold a LoRA checkpoint's adapters (or a run directory's latest) into "
        "the weights, W + alpha/r * B A, and write an ordinary checkpoint.",
        epilog=MERGE_EPILOG,
        formatter_class=FMT,
    )
    m.add_argument("run", metavar="RUN", help="a LoRA run directory or checkpoint")
    m.add_argument("out", metavar="OUT", help="the checkpoint directory to write")
    m.add_argument("--force", action="store_true", help="replace OUT if it exists")
    m.set_defaults(func=_merge)
    e = sub.add_parser(
        "export",
        help="write the adapters in PEFT's format",
        description="Write a LoRA checkpoint's adapters as a PEFT adapter folder "
        "(adapter_config.json, adapter_model.safetensors) for the Hugging Face export of "
        "its base model (Llama architecture).",
        epilog=EXPORT_EPILOG,
        formatter_class=FMT,
    )
    e.add_argument("run", metavar="RUN", help="a LoRA run directory or checkpoint")
    e.add_argument("out", metavar="OUT", help="the adapter folder to write")
    e.add_argument("--base-hf", metavar="DIR", help="also write the base model as a HF folder")
    e.add_argument("--force", action="store_true", help="replace existing output folders")
    e.set_defaults(func=_export)


PARSERS = {"lora": lora_parser}
