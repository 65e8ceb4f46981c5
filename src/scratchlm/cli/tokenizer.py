"""``scratchlm tokenizer ...``: train, apply, inspect and export tokenizers."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from scratchlm.console import live_progress
from scratchlm.errors import DataError, OutputExistsError
from scratchlm.export.hf_tokenizer import save_hf_tokenizer
from scratchlm.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer, train_bpe
from scratchlm.tokenizer.corpus import corpus_files
from scratchlm.tokenizer.files import write_tokenizer_dir
from scratchlm.tokenizer.pretokenize import resolve_pattern
from scratchlm.tokenizer.report import compression, describe, longest_tokens, show_split

FMT = argparse.RawDescriptionHelpFormatter

EXAMPLE_ARGS = {"encode": "'Hello there'", "decode": "72 101 300", "info": "--file notes.txt"}
EPILOG_TOKENIZER_TRAIN = """example:
  scratchlm tokenizer train data/*.txt --vocab-size 10000 --special-token '<|endoftext|>' --out tok/
"""


def _tokenizer_train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.force:  # refuse before any work is done
        raise OutputExistsError(
            f"output directory {out} exists: choose another --out or pass --force"
        )
    start = time.perf_counter()
    if args.char:
        files = corpus_files(args.inputs)
        texts = (p.read_bytes().decode("utf-8", errors="replace") for p in files)
        tok = CharTokenizer.train(texts, args.special_token)
    else:
        vocab, merges = train_bpe(
            args.inputs,
            args.vocab_size,
            args.special_token,
            pattern=resolve_pattern(args.pattern),
            num_workers=args.workers,
            strict=args.strict,
            progress=live_progress(args.quiet),
        )
        metadata = {
            "trained_on": [str(p) for p in args.inputs],
            "vocab_size": args.vocab_size,
            "pattern": args.pattern,
        }
        tok = BPETokenizer(
            vocab, merges, args.special_token, pattern=args.pattern, metadata=metadata
        )
    file = write_tokenizer_dir(tok, out, force=args.force)
    print(f"trained {type(tok).__name__} in {time.perf_counter() - start:.1f}s: {file}")
    print(f"vocab size: {tok.vocab_size}  special tokens: {list(tok.special_tokens) or 'none'}")
    longest = ", ".join(repr(t.decode("utf-8", errors="replace")) for t in longest_tokens(tok, 10))
    print(f"longest tokens: {longest}")
    return 0


def _read_text_arg(args: argparse.Namespace) -> str:
    if args.file:
        try:  # bytes, then decode: read_text would turn "\r\n" into "\n"
            return Path(args.file).read_bytes().decode("utf-8")
        except OSError as e:
            raise DataError(f"cannot read {args.file}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{args.file} is not UTF-8 text (byte {e.start}): {e.reason}") from None
    if args.text is not None:
        return args.text
    return sys.stdin.read()


def _tokenizer_encode(args: argparse.Namespace) -> int:
    tok = load_tokenizer(args.tokenizer)
    text = _read_text_arg(args)
    if args.show:
        print(show_split(tok, text, allow_special=not args.no_special))
        return 0
    ids = tok.encode(text, allow_special=not args.no_special)
    print(json.dumps(ids) if args.json else " ".join(map(str, ids)))
    return 0


def _tokenizer_decode(args: argparse.Namespace) -> int:
    tok = load_tokenizer(args.tokenizer)
    raw = " ".join(args.ids) if args.ids else sys.stdin.read()
    try:
        ids = [int(x) for x in raw.replace(",", " ").strip("[] \n").split()]
    except ValueError:
        raise DataError("ids must be integers separated by spaces or commas") from None
    sys.stdout.write(tok.decode(ids) + "\n")
    return 0


def _tokenizer_info(args: argparse.Namespace) -> int:
    tok = load_tokenizer(args.tokenizer)
    info = describe(tok)
    info["longest_tokens"] = [t.decode("utf-8", errors="replace") for t in longest_tokens(tok, 10)]
    if args.file:
        info["compression"] = compression(tok, args.file)
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0


def _tokenizer_export_hf(args: argparse.Namespace) -> int:
    print(save_hf_tokenizer(load_tokenizer(args.tokenizer), args.out_dir, force=args.force))
    return 0


def tokenizer_parser(tok: argparse.ArgumentParser) -> None:
    tsub = tok.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")

    p = tsub.add_parser(
        "train",
        help="train a byte-level BPE (or character) tokenizer",
        description="Train a byte-level BPE tokenizer on text files or directories.",
        epilog=EPILOG_TOKENIZER_TRAIN,
        formatter_class=FMT,
    )
    p.add_argument(
        "inputs", nargs="+", help="text files, directories, builtin:science or builtin:python"
    )
    p.add_argument("--vocab-size", type=int, default=10_000, help="default: %(default)s")
    p.add_argument(
        "--special-token",
        action="append",
        default=[],
        metavar="T",
        help="a special token, e.g. '<|endoftext|>' (repeatable)",
    )
    p.add_argument(
        "--pattern", default="gpt2", help="split pattern: gpt2 (default), gpt4 or a regex"
    )
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument(
        "--strict", action="store_true", help="refuse invalid UTF-8 instead of replacing it"
    )
    p.add_argument("--char", action="store_true", help="a character-level tokenizer instead of BPE")
    p.add_argument("--force", action="store_true", help="replace an existing --out directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, help="output directory (gets tokenizer.json)")
    p.set_defaults(func=_tokenizer_train)

    for name, helptext, func in (
        ("encode", "text -> ids", _tokenizer_encode),
        ("decode", "ids -> text", _tokenizer_decode),
        ("info", "vocab size, special tokens, compression", _tokenizer_info),
    ):
        p = tsub.add_parser(
            name,
            help=helptext,
            description=f"Tokenizer {name}: {helptext}.",
            epilog=f"example:\n  scratchlm tokenizer {name} runs/tok {EXAMPLE_ARGS[name]}",
            formatter_class=FMT,
        )
        p.add_argument("tokenizer", help="a tokenizer.json or the directory holding it")
        if name == "encode":
            p.add_argument("text", nargs="?", help="text to encode (default: stdin)")
            p.add_argument("--file", help="encode this file instead")
            p.add_argument("--json", action="store_true", help="print ids as a JSON list")
            p.add_argument("--show", action="store_true", help="print the tokens split by |")
            p.add_argument(
                "--no-special", action="store_true", help="encode special-token text as plain text"
            )
        elif name == "decode":
            p.add_argument("ids", nargs="*", help="token ids (default: read from stdin)")
        else:
            p.add_argument("--file", help="measure bytes per token on this text file")
            p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=func)

    p = tsub.add_parser(
        "export-hf",
        help="write a Hugging Face tokenizer folder",
        description="Write tokenizer.json, tokenizer_config.json and special_tokens_map.json, "
        "which transformers.AutoTokenizer.from_pretrained loads with the same ids.",
        epilog="example:\n  scratchlm tokenizer export-hf runs/tok runs/tok-hf",
        formatter_class=FMT,
    )
    p.add_argument("tokenizer", help="a tokenizer.json or the directory holding it")
    p.add_argument("out_dir", help="output directory")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=_tokenizer_export_hf)


PARSERS = {"tokenizer": tokenizer_parser}
