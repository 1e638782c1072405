"""The ASGI app: OpenAI's /v1/chat/completions, /v1/completions and /v1/models, plus /health.

    app = create_app(mpt_lite.load(), model_name="mpt-lite", api_key=None)
    uvicorn.run(app, host="127.0.0.1", port=8000)

Every request goes through one EngineRunner (continuous batching). Errors take OpenAI's shape."""
from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..text.chat_template import render_chat, stop_settings
from ..runtime.engine import Engine
from ..runtime.generation import eos_ids
from ..runtime.sampler import SamplingParams
from ..text.detok import TextDecoder
from .errors import STATUS_TYPES, APIError, bad_request, error_body, too_large, unauthorized
from .protocol import ChatRequest, CompletionRequest, Reply, parse
from .runner import EngineRunner, Job
from .sse import ClientGone, EventStream, until_disconnect

log = logging.getLogger("mpt_lite.server")

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more text than any MPT context holds
DEFAULT_MAX_QUEUE = 64


class APIKeyMiddleware:
    """Refuses (401) every request without `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            auth = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if not auth:
                return await unauthorized("missing API key").response()(scope, receive, send)
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                return await unauthorized("invalid API key").response()(scope, receive, send)
        await self.app(scope, receive, send)


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON; 413 past `limit` bytes (by Content-Length, or as it streams in)."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError as err:
            raise bad_request(f"invalid Content-Length header: {length!r}") from err
        if declared > limit:
            raise too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
    if not body:
        raise bad_request("the request has no body: send a JSON object")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"the body is not valid JSON: {e}") from e


class Service:
    """What the routes share: the model, its tokenizer, the engine runner and the limits."""

    def __init__(self, model: Any, runner: EngineRunner, model_name: str, max_body_bytes: int) -> None:
        if getattr(model, "tokenizer", None) is None:
            raise ValueError("the server needs a model with a tokenizer (tokenizer.json in its checkpoint)")
        if not isinstance(max_body_bytes, int) or max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be a positive integer, got {max_body_bytes!r}")
        self.model, self.tok, self.runner = model, model.tokenizer, runner
        self.model_name, self.max_body_bytes = model_name, max_body_bytes
        self.created = int(time.time())
        self.max_seq_len = model.config.max_seq_len

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")

    def chat_prompt(self, body: ChatRequest) -> tuple[list[int], set[int], list[str]]:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            text = render_chat(self.tok, messages, add_generation_prompt=True)
        except (ValueError, TypeError) as e:
            raise bad_request(str(e), param="messages") from e
        chat_eos, chat_stops = stop_settings(self.tok)
        return self.tok.encode(text), set(chat_eos) | eos_ids(self.model, None), chat_stops + body.stop_list()

    def completion_prompt(self, body: CompletionRequest) -> tuple[list[int], set[int], list[str]]:
        ids = self.tok.encode(body.prompt) if isinstance(body.prompt, str) else list(body.prompt)
        return ids, eos_ids(self.model, None), body.stop_list()

    def budget(self, n_prompt: int, max_tokens: int | None, prompt_param: str) -> int:
        """max_tokens checked against the context (default: the rest of the context)."""
        if n_prompt == 0:
            raise bad_request("the prompt encodes to no tokens", param=prompt_param)
        if self.runner.request_options.get("context_shift"):  # the context slides: no length limit
            return self.max_seq_len if max_tokens is None else max_tokens
        if n_prompt >= self.max_seq_len:
            raise bad_request(f"this model's maximum context length is {self.max_seq_len} tokens, "
                              f"but the prompt has {n_prompt} tokens", param=prompt_param,
                              code="context_length_exceeded")
        if max_tokens is None:
            return self.max_seq_len - n_prompt
        if n_prompt + max_tokens > self.max_seq_len:
            raise bad_request(f"this model's maximum context length is {self.max_seq_len} tokens, but "
                              f"{n_prompt + max_tokens} were requested ({n_prompt} in the prompt, {max_tokens} "
                              "for the completion); lower max_tokens or shorten the prompt",
                              param="max_tokens", code="context_length_exceeded")
        return max_tokens

    async def answer(self, request: Request, chat: bool, body: Any, prompt: list[int], eos: set[int],
                     stops: list[str]) -> Response:
        max_tokens = self.budget(len(prompt), body.max_tokens, "messages" if chat else "prompt")
        params = SamplingParams(do_sample=body.temperature > 0, temperature=body.temperature, top_p=body.top_p,
                                seed=body.seed)
        reply = Reply(chat, self.model_name)
        stack = contextlib.AsyncExitStack()
        try:
            job = await stack.enter_async_context(
                self.runner.job(prompt, max_tokens, params, eos, TextDecoder(self.tok, eos, stops)))
        except BaseException:
            await stack.aclose()
            raise
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return EventStream(stream_chunks(job, reply, len(prompt), usage), on_close=stack.aclose)
        try:
            return JSONResponse(await until_disconnect(request.receive, collect(job, reply, len(prompt))))
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; the request was aborted
        finally:
            await stack.aclose()


async def collect(job: Job, reply: Reply, n_prompt: int) -> dict:
    parts: list[str] = []
    while True:
        msg = await job.next()
        if msg[0] == "text":
            parts.append(msg[1])
        elif msg[0] == "done":
            return reply.whole("".join(parts), msg[1], n_prompt, msg[2])
        elif msg[0] == "error":
            raise msg[1]


async def stream_chunks(job: Job, reply: Reply, n_prompt: int, include_usage: bool):
    if reply.chat:
        yield reply.chunk("", first=True)
    while True:
        msg = await job.next()
        if msg[0] == "text":
            yield reply.chunk(msg[1])
        elif msg[0] == "done":
            yield reply.chunk(None if reply.chat else "", finish_reason=msg[1])
            if include_usage:
                yield reply.usage_chunk(n_prompt, msg[2])
            return
        elif msg[0] == "error":
            yield msg[1].body()
            return


def create_app(model: Any, *, model_name: str = "mpt-lite", api_key: str | None = None,
               max_queue: int = DEFAULT_MAX_QUEUE, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               request_options: dict | None = None, **engine_kwargs: Any) -> FastAPI:
    """The server's ASGI app for a loaded MptForCausalLM. engine_kwargs go to Engine (num_blocks
    or max_bytes, max_num_seqs, max_batch_tokens, prefix_caching). max_queue: requests that may
    wait beyond the max_num_seqs running ones before new ones get 429. request_options go to
    every Engine.add_request (context_shift, n_keep, prompt_lookup_num_tokens)."""
    if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
        raise ValueError("api_key must be a non-empty string (or None for no key)")
    runner = EngineRunner(Engine(model, **engine_kwargs), max_queue=max_queue, request_options=request_options)
    svc = Service(model, runner, model_name, max_body_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        runner.start()
        try:
            yield
        finally:
            runner.stop()

    app = FastAPI(title="mpt-lite", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = svc
    if api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> Response:
        return e.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> Response:
        type_, code = STATUS_TYPES.get(e.status_code, ("invalid_request_error", None))
        message = f"{request.method} {request.url.path}: {e.detail}"
        return JSONResponse(error_body(message, type_, None, code), status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, e: Exception) -> Response:
        log.exception("request failed")
        return JSONResponse(error_body(f"internal error: {type(e).__name__}: {e}", "server_error"), status_code=500)

    @app.get("/health")
    async def health() -> Response:
        """200 while the engine thread runs, 503 otherwise; the numbers are the engine's latest."""
        alive = runner.alive
        return JSONResponse({
            "status": "ok" if alive else "engine stopped", "model": svc.model_name,
            "active_requests": runner.active, "max_queue": runner.max_queue,
            "max_num_seqs": runner.engine.max_num_seqs, "capacity": runner.capacity, **runner.snapshot,
            "counters": dict(runner.counters)}, status_code=200 if alive else 503)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card(svc)]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict:
        svc.check_model(name)
        return model_card(svc)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = parse(ChatRequest, await read_json(request, svc.max_body_bytes))
        svc.check_model(body.model)
        return await svc.answer(request, True, body, *svc.chat_prompt(body))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = parse(CompletionRequest, await read_json(request, svc.max_body_bytes))
        svc.check_model(body.model)
        return await svc.answer(request, False, body, *svc.completion_prompt(body))

    return app


def model_card(svc: Service) -> dict:
    return {"id": svc.model_name, "object": "model", "created": svc.created, "owned_by": "mpt-lite",
            "max_model_len": svc.max_seq_len}
