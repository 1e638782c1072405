"""Server-sent events, and noticing a client that went away.

A request's work runs next to a watcher of the ASGI ``receive`` channel: when the client
disconnects, the work is cancelled at once (not at its next write), so the request's
`finally` aborts it in the engine and its KV blocks return to the pool."""
from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Awaitable, Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class ClientGone(Exception):
    """The client closed the connection before the answer was complete."""


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return


async def until_disconnect(receive: Receive, work: Awaitable[Any]) -> Any:
    """The result of `work`, or ClientGone (with `work` cancelled) if the client leaves first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        raise ClientGone()
    finally:
        for t in (task, watcher):
            if not t.done():
                t.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)


def sse_event(data: Any) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


class EventStream(Response):
    """A response that sends each item of `events` as an SSE `data:` line, then `data: [DONE]`.
    Cancelled when the client disconnects; `on_close` runs in every case."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[Any], on_close: Callable[[], Awaitable[None]] | None = None) -> None:
        # Response.__init__ would render a body; this response streams its own.
        self.events, self.on_close = events, on_close
        self.status_code, self.background = 200, None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await until_disconnect(receive, self._stream(send))
        except (ClientGone, OSError):  # OSError: the server failed to write to a closed socket
            pass
        finally:
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()
            if self.on_close is not None:
                await self.on_close()

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no")]})
        async for item in self.events:
            await send({"type": "http.response.body", "body": sse_event(item), "more_body": True})
        await send({"type": "http.response.body", "body": sse_event("[DONE]"), "more_body": False})
