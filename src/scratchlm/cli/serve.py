"""``scratchlm serve``: an OpenAI-compatible HTTP server and chat page for a model."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys

from scratchlm.chat import default_chat_checkpoint
from scratchlm.checkpoint.manager import CHECKPOINTS, resolve_checkpoint
from scratchlm.cli.chat import add_chat_checkpoint, add_model_options, load_chat_model
from scratchlm.errors import ConfigError
from scratchlm.serve.engine import Engine

# The HTTP stack is the optional extra `serve`: without it the command still shows its
# help, and running it says what to install instead of a traceback.
try:
    from scratchlm.serve.app import DEFAULT_MAX_BODY, ServerSettings
    from scratchlm.serve.server import bind, run_server
except ModuleNotFoundError as missing:
    if (missing.name or "").split(".")[0] not in ("starlette", "uvicorn", "anyio", "h11"):
        raise  # not the extra: a real error
    MISSING_EXTRA: str | None = missing.name
    DEFAULT_MAX_BODY = 1 << 20
else:
    MISSING_EXTRA = None

log = logging.getLogger(__name__)

API_KEY_ENV = "SCRATCHLM_API_KEY"

EPILOG = f"""examples:
  scratchlm serve                                 # the newest model under runs/, port 8000
  scratchlm serve runs/default/sft --port 0       # any free port (printed when ready)
  SCRATCHLM_API_KEY=secret scratchlm serve --host 0.0.0.0

  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"messages": [{{"role": "user", "content": "Why is the sky blue?"}}]}}'

Without CHECKPOINT: the model `scratchlm chat` picks (runs/default/sft, else the newest
run under runs/). The model's id in the API (--model-name) defaults to its run
directory below runs/ (runs/default/sft -> "default/sft"), else the directory's name.
When ready it prints 'scratchlm serve: page at URL  API at URL/v1'. Ctrl-C or SIGTERM
stops it: answers in progress end with an error event. With an API key (--api-key or
${API_KEY_ENV}) every route but GET / and GET /health needs 'Authorization: Bearer KEY'.
See docs/serve.md.
"""


def serve_parser(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Serve a model over HTTP: an OpenAI-compatible API (/v1/chat/completions, "
        "/v1/completions, /v1/models), /health, /metrics, and a chat page at /."
    )
    p.epilog = EPILOG
    add_chat_checkpoint(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s, this machine only; 0.0.0.0: all)",
    )
    p.add_argument(
        "--port", type=int, default=8000, help="port (default: %(default)s; 0: any free one)"
    )
    add_model_options(p)
    p.add_argument(
        "--max-batch",
        type=int,
        default=16,
        metavar="N",
        help="generations decoded together at most (default: %(default)s); each holds a "
        "context's worth of KV cache",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=256,
        metavar="N",
        help="generations that may wait for a slot (default: %(default)s); beyond that "
        "requests get 503 with Retry-After",
    )
    p.add_argument(
        "--max-body",
        type=int,
        default=DEFAULT_MAX_BODY,
        metavar="BYTES",
        help="largest request body accepted (default: %(default)s = 1 MiB; larger: 413)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        metavar="KEY",
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, else none)",
    )
    p.add_argument(
        "--model-name",
        default=None,
        metavar="NAME",
        help="the model's id in the API (default: its run directory, see below)",
    )
    p.set_defaults(func=_serve)


def model_name(path: str | os.PathLike) -> str:
    """The API's model id for a checkpoint or run directory: the run directory relative
    to the ``runs`` folder above it ("default/sft"), else the run directory's name, else
    the checkpoint directory's name."""
    folder = resolve_checkpoint(path).resolve()
    run_dir = folder.parent.parent if folder.parent.name == CHECKPOINTS else folder
    parts = run_dir.parts
    if "runs" in parts[:-1]:
        below = len(parts) - 1 - parts[::-1].index("runs")
        return "/".join(parts[below + 1 :])
    return run_dir.name


def _check(args: argparse.Namespace) -> None:
    for flag, value, low in (
        ("--port", args.port, 0),
        ("--max-batch", args.max_batch, 1),
        ("--max-queue", args.max_queue, 0),
        ("--max-body", args.max_body, 1),
    ):
        if value < low:
            raise ConfigError(f"{flag} must be at least {low}, got {value}")
    if args.port > 65535:
        raise ConfigError(f"--port must be at most 65535, got {args.port}")
    if args.api_key is not None and not args.api_key.strip():
        raise ConfigError("--api-key is empty: give a key, or leave it out for no authentication")


def _serve(args: argparse.Namespace) -> int:
    if MISSING_EXTRA is not None:
        raise ConfigError(
            f"scratchlm serve needs the package {MISSING_EXTRA!r}: install the serve extra "
            "(pip install 'scratchlm[serve]')"
        )
    _check(args)
    path = args.checkpoint if args.checkpoint is not None else default_chat_checkpoint()
    name = args.model_name or model_name(path)
    sock = bind(args.host, args.port)  # before loading: a taken port fails fast
    if args.api_key is None and not _loopback(sock):
        log.warning(
            "listening on %s without an API key: anyone who reaches this address can use "
            "the model (--api-key or $%s sets one)",
            args.host,
            API_KEY_ENV,
        )
    try:
        model, tokenizer = load_chat_model(path, args.device, args.int8, args.bf16)
        engine = Engine(model, tokenizer, max_batch=args.max_batch, max_queue=args.max_queue)
        settings = ServerSettings(name, api_key=args.api_key, max_body=args.max_body)
        run_server(engine, tokenizer, settings, sock)
    finally:
        sock.close()
    print("scratchlm serve: stopped", file=sys.stderr, flush=True)
    return 0


def _loopback(sock: socket.socket) -> bool:
    """Whether ``sock`` listens on this machine only (127.0.0.0/8 or ::1)."""
    try:
        return ipaddress.ip_address(sock.getsockname()[0]).is_loopback
    except ValueError:  # an IPv6 address with a scope (fe80::1%eth0): a network interface
        return False


PARSERS = {"serve": serve_parser}
