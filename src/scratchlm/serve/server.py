"""Running the app on uvicorn: the listening socket, the ready line, the shutdown.

``bind`` opens the socket before the model loads, so a taken port fails at once with
one line. ``run_server`` serves until Ctrl-C or SIGTERM, prints the ready line
``scratchlm serve: page at URL/  API at URL/v1`` once uvicorn accepts connections, and
on the signal closes the engine at once, which ends the answers in progress (their
clients get an error event) so that their connections close and the process exits.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from scratchlm.errors import ConfigError, ScratchLMError
from scratchlm.serve.app import ServerSettings, build_app
from scratchlm.serve.engine import Engine
from scratchlm.tokenizer import Tokenizer


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; ScratchLMError (one line) when the port is in
    use or the address is not this machine's."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"--host {host}: unknown address ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ScratchLMError(
                f"port {port} on {host} is already in use: stop what holds it, or pick "
                "another with --port (0: any free port)"
            ) from None
        raise ScratchLMError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server, with the shutdown this command wants: on Ctrl-C or SIGTERM the
    engine closes at once (answers in progress end, so their connections close) and
    the signal is not raised again afterwards (uvicorn re-raises it by default)."""

    def __init__(self, config: uvicorn.Config, engine: Engine) -> None:
        super().__init__(config)
        self.engine = engine

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: object) -> None:
        if not self.should_exit:
            # close() joins the worker thread: not inside a signal handler.
            threading.Thread(target=self.engine.close, name="engine-close").start()
        super().handle_exit(sig, frame)  # type: ignore[arg-type]


async def _announce_when_ready(server: uvicorn.Server, url: str) -> None:
    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.02)
    print(f"scratchlm serve: page at {url}/  API at {url}/v1", flush=True)


async def _run(server: uvicorn.Server, sock: socket.socket) -> None:
    ready = asyncio.ensure_future(_announce_when_ready(server, url_of(sock)))
    try:
        await server.serve(sockets=[sock])
    finally:
        ready.cancel()


def run_server(
    engine: Engine, tokenizer: Tokenizer, settings: ServerSettings, sock: socket.socket
) -> None:
    """Serve ``engine`` on the listening ``sock`` until a signal stops it; the engine is
    started here and closed before returning."""
    config = uvicorn.Config(
        build_app(engine, tokenizer, settings),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        lifespan="off",
    )
    server = _Server(config, engine)
    engine.start()
    try:
        asyncio.run(_run(server, sock))
    finally:
        engine.close()
