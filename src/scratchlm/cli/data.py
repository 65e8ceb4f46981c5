"""``scratchlm prepare``: encode a corpus into token files for training."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scratchlm.cli.config_flags import keyword_default
from scratchlm.console import live_progress
from scratchlm.data.encode import prepare
from scratchlm.tokenizer import load_tokenizer

FMT = argparse.RawDescriptionHelpFormatter

EPILOG_PREPARE = """inputs:
  text files (split into documents at <|endoftext|>), directories of files, .json (a list
  of strings), .jsonl (--text-field), .csv (--csv-column, or whole rows), .parquet
  (--text-field), a folder from datasets' save_to_disk, builtin:science, builtin:python

example:
  scratchlm prepare data/books/ notes.jsonl --tokenizer runs/tok --out runs/data --val-docs 100
"""


def _prepare(args: argparse.Namespace) -> int:
    tok = load_tokenizer(args.tokenizer)
    out = Path(args.out)
    existed = out.exists() and not args.force  # then prepare either does nothing or refuses
    start = time.perf_counter()
    meta = prepare(
        args.inputs,
        tok,
        out,
        **({} if args.val_fraction is None else {"val_fraction": args.val_fraction}),
        val_docs=args.val_docs,
        text_field=args.text_field,
        csv_column=args.csv_column,
        strict=args.strict,
        workers=args.workers,
        force=args.force,
        progress=live_progress(args.quiet),
    )
    seconds = time.perf_counter() - start
    splits = meta["splits"]
    if existed:
        print(f"{out} (unchanged: same inputs, tokenizer and settings)")
    else:
        total = sum(s["tokens"] for s in splits.values())
        print(
            f"prepared {out} in {seconds:.1f}s ({total / max(seconds, 1e-9):,.0f} tokens/s) "
            f"from {len(meta['sources'])} file(s)"
        )
    for name, s in splits.items():
        print(
            f"  {name + ':':6} {s['tokens']:>13,} tokens  {s['documents']:>9,} documents  "
            f"{s['bytes_per_token']:.2f} bytes/token"
        )
    print(f"  dtype:  {meta['dtype']} (vocab size {meta['vocab_size']})")
    replaced = meta["replaced_utf8"]
    if replaced["bytes"]:
        print(
            f"  invalid UTF-8: {replaced['bytes']} byte(s) in {replaced['files']} file(s) "
            "replaced with U+FFFD"
        )
    return 0


def prepare_parser(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Encode text with a tokenizer into DATA_DIR/train.bin and val.bin (uint16 or uint32 "
        "token ids, each document followed by <|endoftext|>) plus meta.json. The split is by "
        "document, decided by a hash of its text. A DATA_DIR made from the same inputs, "
        "tokenizer and settings is left as is."
    )
    p.epilog = EPILOG_PREPARE
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, directories or builtin:NAME")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer folder or file")
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="output directory")
    split = p.add_mutually_exclusive_group()
    split.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        metavar="F",
        help="share of documents for validation, by content hash "
        f"(default: {keyword_default(prepare, 'val_fraction')})",
    )
    split.add_argument(
        "--val-docs",
        type=int,
        default=None,
        metavar="N",
        help="exactly N documents for validation (those with the smallest hashes)",
    )
    p.add_argument(
        "--text-field",
        default=keyword_default(prepare, "text_field"),
        help="field of JSON/JSONL/Parquet/HF records (default: %(default)s)",
    )
    p.add_argument(
        "--csv-column", default=None, metavar="C", help="CSV column (default: whole rows)"
    )
    p.add_argument(
        "--strict", action="store_true", help="refuse invalid UTF-8 instead of replacing it"
    )
    p.add_argument(
        "--workers", type=int, default=None, metavar="N", help="processes (default: all cores)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing DATA_DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_prepare)


PARSERS = {"prepare": prepare_parser}
