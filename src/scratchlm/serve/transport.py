"""The HTTP plumbing under the routes: bounded body reading, client disconnects, the
Server-Sent Events response, and the merged event stream of a request's engine streams.

A client that goes away is noticed while its request waits or runs, not only when the
next token is written: ``EventStream`` and ``until_disconnect`` watch the ASGI
``receive`` channel for ``http.disconnect`` beside the work, and cancel the work when it
comes. Cancelling ``merged_events`` cancels every engine stream not yet finished, which
frees their slots at the engine's next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from scratchlm.serve.engine import FinishEvent, RequestStream, TokenEvent
from scratchlm.serve.protocol import APIError

log = logging.getLogger(__name__)

T = TypeVar("T")
Event = TokenEvent | FinishEvent

# One encoder for every event: json.dumps with options builds a new one per call.
_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

# Past the limit the rest of a body is still read (and dropped) up to this many bytes,
# so a client that sends it all before reading gets the 413 rather than a broken pipe.
DRAIN_LIMIT = 64 << 20


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


# ------------------------------------------------------------------ request body


async def read_json(request: Request, limit: int) -> Any:
    """The request's JSON body. APIError 413 over ``limit`` bytes (by Content-Length, or
    counted while a chunked body arrives), 400 when it is empty or not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        size = int(declared)
        if size <= DRAIN_LIMIT:
            await _drain(request)
        raise _too_large(limit, size)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                await _drain(request)
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect as e:
        raise ClientGone from e
    body = b"".join(chunks)
    if not body.strip():
        raise APIError(400, "the request body is empty: send a JSON object", code="invalid_json")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError
        raise APIError(
            400, f"the request body is not valid JSON: {e}", code="invalid_json"
        ) from None


def _too_large(limit: int, size: int | None = None) -> APIError:
    got = f" ({size} bytes)" if size is not None else ""
    return APIError(
        413,
        f"the request body is larger than the server's limit of {limit} bytes{got} "
        "(scratchlm serve --max-body)",
        code="request_too_large",
    )


async def _drain(request: Request) -> None:
    """Read and drop what is left of an oversized body, up to DRAIN_LIMIT bytes."""
    size = 0
    with contextlib.suppress(ClientDisconnect, RuntimeError):
        async for chunk in request.stream():
            size += len(chunk)
            if size > DRAIN_LIMIT:
                break


# ------------------------------------------------------------------- disconnects


async def _disconnected(receive: Receive) -> None:
    """Return once the client has gone (the request body must already be read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """``await work``, cancelled when the client goes away first (then ClientGone)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, watcher):
            t.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled() or not task.done():
        raise ClientGone
    return task.result()


class EventStream(Response):
    """A Server-Sent Events response: ``data: {json}`` per item, then ``data: [DONE]``.

    The items come from an async iterator, closed when the response ends; ``on_close``
    runs then too, also when the client left before the first item (the iterator's own
    cleanup never ran then): it cancels the generation."""

    def __init__(
        self, items: AsyncIterator[dict[str, Any]], on_close: Callable[[], None] | None = None
    ) -> None:
        # Not Response.__init__: it would declare a Content-Length for an empty body.
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # proxies such as nginx: do not buffer
        ]
        self.items = items
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A bug in the writer propagates (the client got what was written so far).
        try:
            await until_disconnect(receive, self._write(send))
        except ClientGone:
            pass  # the writer was cancelled: nobody is left to read
        finally:
            if self.on_close is not None:
                self.on_close()

    async def _write(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            async for item in self.items:
                data = _encode_json(item)
                await send(
                    {
                        "type": "http.response.body",
                        "body": f"data: {data}\n\n".encode(),
                        "more_body": True,
                    }
                )
            await send(
                {"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True}
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away between two writes
            log.debug("client disconnected mid-stream")
        finally:
            await self.items.aclose()  # type: ignore[attr-defined]


# ---------------------------------------------------------------- engine events


async def merged_events(
    streams: Sequence[RequestStream],
    on_token: Callable[[int, float | None, float], None] | None = None,
) -> AsyncIterator[tuple[int, Event]]:
    """The events of several engine streams as ``(stream index, event)``, in arrival
    order, until each has finished. ``on_token(index, since_last, since_start)`` hears of
    every token (``since_last`` None for a stream's first). Closed or cancelled early,
    it cancels every stream that has not finished."""
    start = time.monotonic()
    last: list[float | None] = [None] * len(streams)
    finished: set[int] = set()
    tasks: list[asyncio.Future] = []
    try:
        async with contextlib.aclosing(_tagged(streams, tasks)) as tagged:
            async for i, event in tagged:
                now = time.monotonic()
                if isinstance(event, TokenEvent):
                    if on_token is not None:
                        on_token(i, None if last[i] is None else now - last[i], now - start)
                    last[i] = now
                else:
                    finished.add(i)
                yield i, event
                if len(finished) == len(streams):
                    return
    finally:
        for i, stream in enumerate(streams):
            if i not in finished:
                stream.cancel()
        for task in tasks:
            task.cancel()


async def _tagged(
    streams: Sequence[RequestStream], tasks: list[asyncio.Future]
) -> AsyncIterator[tuple[int, Event]]:
    """Every stream's events tagged with its index, in arrival order (never ending by
    itself when there are several: the caller stops once each has finished). One
    stream, the common case, is read directly; several are pumped by one task each
    (added to ``tasks``) into a shared queue."""
    if len(streams) == 1:
        async for event in streams[0]:
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, Event | BaseException]] = asyncio.Queue()

    async def pump(i: int, stream: RequestStream) -> None:
        try:
            async for event in stream:
                queue.put_nowait((i, event))
        except Exception as e:
            queue.put_nowait((i, e))

    tasks.extend(asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams))
    while True:
        i, event = await queue.get()
        if isinstance(event, BaseException):
            raise event
        yield i, event


async def collect(
    events: AsyncIterator[tuple[int, Event]], count: int
) -> list[tuple[list[TokenEvent], FinishEvent]]:
    """Every stream's tokens and finish, by index, once all ``count`` have finished."""
    tokens: list[list[TokenEvent]] = [[] for _ in range(count)]
    finishes: list[FinishEvent | None] = [None] * count
    try:
        async for i, event in events:
            if isinstance(event, TokenEvent):
                tokens[i].append(event)
            else:
                finishes[i] = event
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    assert all(f is not None for f in finishes), finishes
    return list(zip(tokens, finishes, strict=True))  # type: ignore[arg-type]
