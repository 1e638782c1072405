"""The ASGI app: OpenAI's /v1/chat/completions, /v1/completions and /v1/models, plus /health and the
chat page at / (page.py).

    app = create_app(mpt_lite.load(), model_name="mpt-lite", api_key=None)
    uvicorn.run(app, host="127.0.0.1", port=8000)

Every request goes through one EngineRunner (continuous batching). Errors take OpenAI's shape."""
from __future__ import annotations

import contextlib
import hmac
import logging
import re
import time
from typing import Any, Awaitable, Callable, Sequence

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..runtime.constraints import constraint_factory
from ..text.chat_encode import encode_chat
from ..text.chat_template import stop_settings
from ..runtime.engine import Engine
from ..runtime.generation import eos_ids
from ..runtime.kv_budget import default_kv_bytes
from ..runtime.sampler import SEED_MAX, SamplingParams
from ..text.detok import TextDecoder
from .body import read_json
from .choices import collect, stream_chunks
from .cors import add_cors, check_origins
from .errors import STATUS_TYPES, APIError, bad_request, error_body, unauthorized
from .logprob_format import LogprobFormat
from .page import is_public, page_file
from .protocol import ChatRequest, CompletionRequest, Reply, parse
from .runner import EngineRunner
from .sse import ClientGone, EventStream, until_disconnect

log = logging.getLogger("mpt_lite.server")

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more text than any MPT context holds
DEFAULT_MAX_QUEUE = 64
DEFAULT_MAX_NUM_SEQS = 64  # as Engine's


class APIKeyMiddleware:
    """Refuses (401) every request without `Authorization: Bearer <key>`, except the chat page's
    static files (page.is_public), which hold no secret and ask for the key themselves."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_public(scope):
            auth = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if not auth:
                return await unauthorized("missing API key").response()(scope, receive, send)
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                return await unauthorized("invalid API key").response()(scope, receive, send)
        await self.app(scope, receive, send)


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
        """Message text is text: only the template's own markers become special tokens."""
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            ids = encode_chat(self.tok, messages, add_generation_prompt=True)
        except (ValueError, TypeError) as e:
            raise bad_request(str(e), param=message_param(str(e))) from e
        chat_eos, chat_stops = stop_settings(self.tok)
        return ids, set(chat_eos) | eos_ids(self.model, None), chat_stops + body.stop_list()

    def completion_prompt(self, body: CompletionRequest) -> tuple[list[int], set[int], list[str]]:
        """A text prompt is text (`<|endoftext|>` in it is not eos); token ids are taken as they are."""
        ids = self.tok.encode_text(body.prompt) if isinstance(body.prompt, str) else list(body.prompt)
        return ids, eos_ids(self.model, None), body.stop_list()

    def budget(self, n_prompt: int, max_tokens: int | None, prompt_param: str, limit_param: str = "max_tokens") -> int:
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
                              f"for the completion); lower {limit_param} or shorten the prompt",
                              param=limit_param, code="context_length_exceeded")
        return max_tokens

    def constraint(self, body: Any):
        """A maker of grammar matchers for response_format (None for free text); 400 naming the problem."""
        schema = body.response_format.constraint_schema() if body.response_format is not None else None
        if schema is None:
            return None
        try:
            return constraint_factory(self.tok, json_schema=schema)
        except (ValueError, TypeError, ImportError) as e:
            raise bad_request(f"response_format: {e}", param="response_format") from e

    async def answer(self, request: Request, chat: bool, body: Any, prompt: list[int], eos: set[int],
                     stops: list[str]) -> Response:
        limit_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        max_tokens = self.budget(len(prompt), body.token_limit(), "messages" if chat else "prompt", limit_param)
        make = self.constraint(body)
        want = body.logprobs_wanted()
        echo = "" if chat or not body.echo else body.prompt if isinstance(body.prompt, str) else self.tok.decode(prompt)
        reply = Reply(chat, self.model_name)
        stack = contextlib.AsyncExitStack()
        jobs = []
        try:
            for i in range(body.n):  # each choice its own request; a seed gives choice i seed + i
                params = SamplingParams(do_sample=body.temperature > 0, temperature=body.temperature,
                                        top_p=body.top_p, seed=None if body.seed is None else wrap_seed(body.seed + i),
                                        presence_penalty=body.presence_penalty,
                                        frequency_penalty=body.frequency_penalty, logprobs=want)
                jobs.append(await stack.enter_async_context(self.runner.job(
                    prompt, max_tokens, params, eos, TextDecoder(self.tok, eos, stops),
                    constraint=make() if make is not None else None)))
        except BaseException:
            await stack.aclose()
            raise
        formats = [LogprobFormat(self.tok, chat, len(echo)) if want is not None else None for _ in jobs]
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return EventStream(stream_chunks(jobs, reply, len(prompt), usage, formats, echo), on_close=stack.aclose)
        try:
            return JSONResponse(await until_disconnect(request.receive,
                                                       collect(jobs, reply, len(prompt), formats, echo)))
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; the request was aborted
        finally:
            await stack.aclose()


def wrap_seed(seed: int) -> int:
    """seed + i for choice i, wrapped into the signed 64-bit range the sampler accepts."""
    return seed if seed <= SEED_MAX else seed - (1 << 64)


def message_param(message: str) -> str:
    """'messages.3.role' for an error about messages[3].role, else 'messages'."""
    m = re.match(r"messages\[(\d+)\]\.(\w+)", message)
    return f"messages.{m.group(1)}.{m.group(2)}" if m else "messages"


def create_app(model: Any, *, model_name: str = "mpt-lite", api_key: str | None = None,
               max_queue: int = DEFAULT_MAX_QUEUE, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               allow_origins: Sequence[str] = (), health_extra: Callable[[], Awaitable[dict]] | None = None,
               request_options: dict | None = None, **engine_kwargs: Any) -> FastAPI:
    """The server's ASGI app for a loaded MptForCausalLM. engine_kwargs go to Engine (num_blocks
    or max_bytes, max_num_seqs, max_batch_tokens, prefix_caching); without num_blocks or max_bytes
    the KV budget is sized from the model and the free memory (runtime.kv_budget). max_queue:
    requests that may wait beyond the max_num_seqs running ones before new ones get 429.
    allow_origins: web origins whose pages may call the server (CORS); none by default.
    health_extra: more fields for /health (a Ray Serve replica adds its id and the deployment's state).
    request_options go to every Engine.add_request (context_shift, n_keep, prompt_lookup_num_tokens)."""
    if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
        raise ValueError("api_key must be a non-empty string (or None for no key)")
    origins = check_origins(allow_origins)
    if "num_blocks" not in engine_kwargs and "max_bytes" not in engine_kwargs:
        engine_kwargs["max_bytes"] = default_kv_bytes(model, engine_kwargs.get("max_num_seqs", DEFAULT_MAX_NUM_SEQS))
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
    add_cors(app, origins)

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

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def chat_page() -> Response:
        return page_file("index.html")

    @app.api_route("/static/{name}", methods=["GET", "HEAD"], include_in_schema=False)
    async def chat_page_file(name: str) -> Response:
        return page_file(name)

    @app.get("/health")
    async def health() -> Response:
        """200 while the engine thread runs, 503 otherwise; the numbers are the engine's latest."""
        alive = runner.alive
        return JSONResponse({
            "status": "ok" if alive else "engine stopped", "model": svc.model_name,
            "active_requests": runner.active, "max_queue": runner.max_queue,
            "max_num_seqs": runner.engine.max_num_seqs, "capacity": runner.capacity, **runner.snapshot,
            "counters": runner.counters_now(), **(await health_extra() if health_extra else {})},
            status_code=200 if alive else 503)

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
