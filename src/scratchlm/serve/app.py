"""The OpenAI-compatible HTTP app: ``build_app(engine, tokenizer, settings)``.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``
(and ``/v1/models/{id}``), ``GET /health`` (public), ``GET /metrics``, ``GET /`` (the
chat page, public, with ``/static/...``). The app is thin: bodies are validated by
``serve.protocol``, turned into engine requests by ``serve.prompts`` (in a worker
thread: tokenising a long prompt must not stall the other clients), run by the engine,
and shaped by ``serve.responses``; ``serve.transport`` streams them and notices clients
that leave, whose generation is then cancelled.

Every error is OpenAI's error JSON with the right status (never a traceback, which goes
to the log): 400 invalid JSON or field, 401 a missing or wrong API key, 404 unknown
model or path, 405 wrong method, 413 a body over the limit, 503 with Retry-After when
the engine's queue is full, 500 when generation itself failed (mid-stream: an
``{"error": ...}`` event, then ``[DONE]``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from scratchlm.errors import ScratchLMError
from scratchlm.serve.chunks import (
    Reply,
    chat_body,
    chat_chunks,
    completion_body,
    completion_chunks,
)
from scratchlm.serve.engine import (
    Engine,
    EngineBusyError,
    EngineClosedError,
    FinishEvent,
    GenerationRequest,
    RequestStream,
    TokenEvent,
)
from scratchlm.serve.metrics import ServerMetrics
from scratchlm.serve.prompts import chat_prompt, completion_prompts
from scratchlm.serve.protocol import APIError, error_body, parse_chat, parse_completion
from scratchlm.serve.transport import (
    ClientGone,
    Event,
    EventStream,
    collect,
    merged_events,
    read_json,
    until_disconnect,
)
from scratchlm.tokenizer import Tokenizer

log = logging.getLogger(__name__)
T = TypeVar("T")

STATIC = Path(__file__).parent / "static"
PUBLIC = ("/", "/health")  # reachable without the API key, with /static/...
DEFAULT_MAX_BODY = 1 << 20
CLIENT_CLOSED = 499  # nginx's status for a request whose client left: metrics only


@dataclass(frozen=True)
class ServerSettings:
    model_name: str
    api_key: str | None = None  # None: no authentication
    max_body: int = DEFAULT_MAX_BODY  # bytes of a request body


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _off_loop(prepare: Callable[..., T], *args: Any) -> T:
    """``prepare(*args)`` (rendering, tokenising) in a worker thread, so a long prompt
    does not hold up the other clients; a ScratchLMError (text the tokenizer cannot
    encode, say) is the client's: 400."""
    try:
        return await asyncio.to_thread(prepare, *args)
    except APIError:
        raise
    except ScratchLMError as e:
        raise APIError(400, str(e), code="invalid_value") from None


def _cancel(streams: list[RequestStream]) -> None:
    """Cancel the streams still generating (a finished one ignores it)."""
    for stream in streams:
        stream.cancel()


class _Guard:
    """ASGI middleware around every route: the API key check, and the request count by
    route and status."""

    def __init__(self, app: ASGIApp, settings: ServerSettings, metrics: ServerMetrics) -> None:
        self.app = app
        self.key = None if settings.api_key is None else settings.api_key.encode()
        self.metrics = metrics

    def _authorized(self, scope: Scope) -> bool:
        path = scope["path"]
        if self.key is None or path in PUBLIC or path.startswith("/static/"):
            return True
        given = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        # compare_digest: the time taken does not tell how much of a guess was right.
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # if the app fails before it answers

        async def send_and_note(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self._authorized(scope):
                await self.app(scope, receive, send_and_note)
            else:
                error = APIError(
                    401,
                    "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await _error_response(error)(scope, receive, send_and_note)
        finally:
            self.metrics.request_done(scope["path"], status)


class OpenAIServer:
    """The routes' state: the engine, the tokenizer, the settings and the metrics."""

    def __init__(self, engine: Engine, tokenizer: Tokenizer, settings: ServerSettings) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.settings = settings
        self.metrics = ServerMetrics()
        self.created = int(time.time())

    # ------------------------------------------------------------- generation

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.settings.model_name:
            raise APIError(
                404,
                f"the model {model!r} does not exist: this server serves "
                f"{self.settings.model_name!r} (GET /v1/models)",
                param="model",
                code="model_not_found",
            )

    def _submit(self, requests: list[GenerationRequest]) -> list[RequestStream]:
        """Every request into the engine, or none (the ones already in are cancelled)."""
        loop = asyncio.get_running_loop()
        streams: list[RequestStream] = []
        try:
            for request in requests:
                streams.append(self.engine.submit(request, loop=loop))
        except ScratchLMError as e:
            _cancel(streams)
            if isinstance(e, EngineBusyError):
                raise APIError(
                    503,
                    f"the server is busy, try again shortly: {e}",
                    code="queue_full",
                    headers={"Retry-After": "1"},
                ) from None
            if isinstance(e, EngineClosedError):
                raise APIError(503, "the server is shutting down", code="shutting_down") from None
            raise APIError(400, str(e), code="invalid_value") from None
        return streams

    def _events(self, streams: list[RequestStream]) -> AsyncIterator[tuple[int, Event]]:
        return merged_events(streams, on_token=self.metrics.token_seen)

    async def _collect(
        self, request: Request, events: AsyncIterator[tuple[int, Event]], streams: list
    ) -> list[tuple[list[TokenEvent], FinishEvent]]:
        """Every stream's whole answer; ClientGone if the client leaves first."""
        try:
            return await until_disconnect(request.receive, collect(events, len(streams)))
        finally:
            _cancel(streams)  # frees the slots of a client that left (a no-op otherwise)

    async def chat_completions(self, request: Request) -> Response:
        parsed = parse_chat(await read_json(request, self.settings.max_body))
        self._check_model(parsed.common.model)
        prompt = await _off_loop(chat_prompt, parsed, self.tokenizer, self.engine.config)
        streams = self._submit(list(prompt.requests))
        reply = Reply.new("chatcmpl", self.settings.model_name)
        events = self._events(streams)
        if parsed.common.stream:
            chunks = chat_chunks(reply, parsed, self.tokenizer, events, len(streams))
            return EventStream(chunks, on_close=lambda: _cancel(streams))
        results = await self._collect(request, events, streams)
        return JSONResponse(chat_body(reply, parsed, self.tokenizer, results))

    async def completions(self, request: Request) -> Response:
        parsed = parse_completion(await read_json(request, self.settings.max_body))
        self._check_model(parsed.common.model)
        prompts = await _off_loop(completion_prompts, parsed, self.tokenizer, self.engine.config)
        streams = self._submit([r for p in prompts for r in p.requests])
        reply = Reply.new("cmpl", self.settings.model_name)
        events = self._events(streams)
        if parsed.common.stream:
            chunks = completion_chunks(reply, parsed, self.tokenizer, prompts, events)
            return EventStream(chunks, on_close=lambda: _cancel(streams))
        results = await self._collect(request, events, streams)
        return JSONResponse(completion_body(reply, parsed, self.tokenizer, prompts, results))

    # ----------------------------------------------------------------- others

    def _model_card(self) -> dict[str, Any]:
        return {
            "id": self.settings.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "scratchlm",
            "max_model_len": self.engine.config.context_length,
        }

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        self._check_model(request.path_params["model"])
        return JSONResponse(self._model_card())

    async def health(self, request: Request) -> Response:
        stats = self.engine.stats()
        return JSONResponse(
            {
                "status": "ok",
                "running": stats.running,
                "waiting": stats.waiting,
                "batch_size": stats.batch_size,
                "max_batch": stats.max_batch,
                "max_queue": stats.max_queue,
            }
        )

    async def prometheus(self, request: Request) -> Response:
        text = self.metrics.render(self.engine.stats())
        return Response(text, media_type=None, headers={"Content-Type": self.metrics.content_type})

    async def page(self, request: Request) -> Response:
        index = STATIC / "index.html"
        if not index.is_file():
            raise APIError(
                404, "the chat page is not installed with this package", code="not_found"
            )
        return FileResponse(index, headers={"Cache-Control": "no-cache"})


def build_app(engine: Engine, tokenizer: Tokenizer, settings: ServerSettings) -> Starlette:
    """The ASGI app serving ``engine`` (started and closed by the caller)."""
    server = OpenAIServer(engine, tokenizer, settings)

    async def api_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, APIError)
        return _error_response(error)

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        if error.status_code == 404:
            message = f"no route {request.url.path}: see GET /v1/models, POST /v1/chat/completions"
        elif error.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = error.detail
        return _error_response(APIError(error.status_code, message, headers=error.headers))

    async def client_gone(request: Request, error: Exception) -> Response:
        return Response(status_code=CLIENT_CLOSED)

    async def server_error(request: Request, error: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return JSONResponse(error_body("internal server error (logged)", "server_error"), 500)

    routes = [
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/models/{model:path}", server.model, methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/metrics", server.prometheus, methods=["GET"]),
        Route("/", server.page, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC, check_dir=False)),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(_Guard, settings=settings, metrics=server.metrics)],
        exception_handlers={
            APIError: api_error,
            HTTPException: http_error,
            ClientGone: client_gone,
            Exception: server_error,
        },
    )
