"""The engine loop: one thread drives the Engine (which is not thread-safe); the event loop talks
to it through a thread-safe inbox, and each request gets its tokens' text back on its own
asyncio queue (loop.call_soon_threadsafe) as soon as a step produces them.

Requests decode together (continuous batching): a request joins the running batch at the next
step, and a request whose client went away is aborted between steps, which frees its KV blocks."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from ..runtime.engine import Engine, Request
from ..runtime.sampler import SamplingParams
from ..text.detok import TextDecoder
from .errors import APIError, bad_request, queue_full

log = logging.getLogger("mpt_lite.server")

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}


@dataclass(eq=False)
class Job:
    """One request as both threads see it. Messages on `events`: ("accepted",), ("text", piece,
    logprobs), ("done", finish_reason, completion_tokens), ("error", APIError); logprobs: the
    TokenLogprob of each token behind the piece (empty unless params.logprobs is set)."""

    prompt: list[int]
    max_tokens: int
    params: SamplingParams
    eos: set[int]
    decoder: TextDecoder
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    ended: bool = False  # event-loop side: "done" or "error" was received
    req: Request | None = None  # engine thread only
    constraint: Any = None  # a runtime.constraints.Constraint, or None
    pending: list = field(default_factory=list)  # engine thread: logprobs of tokens whose text is held back

    def send(self, msg: tuple) -> None:  # engine thread
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, msg)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass

    async def next(self) -> tuple:  # event loop
        msg = await self.events.get()
        if msg[0] in ("done", "error"):
            self.ended = True
        return msg


class EngineRunner:
    def __init__(self, engine: Engine, max_queue: int = 64, request_options: dict | None = None) -> None:
        if not isinstance(max_queue, int) or max_queue < 0:
            raise ValueError(f"max_queue must be a non-negative integer, got {max_queue!r}")
        self.engine = engine
        self.request_options = dict(request_options or {})  # add_request options of every request
        self.max_queue = max_queue
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._jobs: dict[Request, Job] = {}  # engine thread only
        self._thread: threading.Thread | None = None
        self.active = 0  # event-loop side: accepted requests not yet over
        # requests = completed + aborted + rejected + failed once none is in flight
        self.counters = {"requests": 0, "completed": 0, "aborted": 0, "rejected": 0, "failed": 0,
                         "completion_tokens": 0}
        self._counters_lock = threading.Lock()  # both threads count
        self.snapshot: dict[str, Any] = {}
        self._publish()

    # ---- lifecycle ----
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the engine loop is already running")
        self._thread = threading.Thread(target=self._loop, name="mpt-lite-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        self._inbox.put(None)
        self._thread.join(timeout)
        self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def capacity(self) -> int:
        """Requests accepted at once: a full batch running plus max_queue waiting."""
        return self.engine.max_num_seqs + self.max_queue

    def count(self, name: str, n: int = 1) -> None:
        with self._counters_lock:
            self.counters[name] += n

    def counters_now(self) -> dict[str, int]:
        with self._counters_lock:
            return dict(self.counters)

    # ---- event-loop side ----
    @contextlib.asynccontextmanager
    async def job(self, prompt: list[int], max_tokens: int, params: SamplingParams, eos: set[int],
                  decoder: TextDecoder, constraint: Any = None) -> AsyncIterator[Job]:
        """Submits a request and waits until the engine has taken it (errors from add_request
        arrive as APIError here); leaving the block early aborts it."""
        if not self.alive:
            raise APIError(503, "the engine is not running", type="server_error", code="engine_stopped")
        self.count("requests")
        if self.active >= self.capacity:
            self.count("rejected")
            raise queue_full(self.max_queue)
        job = Job(prompt, max_tokens, params, eos, decoder, asyncio.get_running_loop(), constraint=constraint)
        self.active += 1
        self._inbox.put(("add", job))
        try:
            msg = await job.next()
            if msg[0] == "error":
                raise msg[1]
            yield job
        finally:
            self.active -= 1
            if not job.ended:
                self._inbox.put(("abort", job))

    # ---- engine thread ----
    def _loop(self) -> None:
        while True:
            for cmd in self._commands(block=not self.engine.has_unfinished()):
                if cmd is None:
                    self._fail_all(APIError(503, "the server is shutting down", type="server_error",
                                            code="shutting_down"))
                    self._publish()
                    return
                self._handle(*cmd)
            if self.engine.has_unfinished():
                try:
                    self._dispatch(self.engine.step())
                except Exception as e:  # noqa: BLE001 - keep serving; the requests in flight fail
                    log.exception("engine step failed")
                    self._fail_all(APIError(500, f"the engine failed: {type(e).__name__}: {e}",
                                            type="server_error", code="engine_error"))
            self._publish()

    def _commands(self, block: bool) -> list:
        cmds = [self._inbox.get()] if block else []
        while True:
            try:
                cmds.append(self._inbox.get_nowait())
            except queue.Empty:
                return cmds

    def _handle(self, kind: str, job: Job) -> None:
        if kind == "add":
            try:
                req = self.engine.add_request(job.prompt, job.max_tokens, params=job.params,
                                              eos_token_id=sorted(job.eos), constraint=job.constraint,
                                              **self.request_options)
            except (ValueError, TypeError, IndexError) as e:  # the engine's checks of the request
                self.count("rejected")
                job.send(("error", bad_request(str(e))))
                return
            except Exception as e:  # noqa: BLE001
                log.exception("add_request failed")
                self.count("failed")
                job.send(("error", APIError(500, f"the engine could not take the request: {type(e).__name__}: {e}",
                                            type="server_error", code="engine_error")))
                return
            job.req = req
            job.send(("accepted",))
            self._jobs[req] = job
            if req.finished:
                self._finish(req, job)
        elif kind == "abort":
            req = job.req
            if req is not None and self._jobs.pop(req, None) is not None:
                self.engine.abort(req)
                self.count("aborted")

    def _dispatch(self, events: list[tuple[Request, int]]) -> None:
        # a step may give one request several tokens (speculative decoding): it is finished from the
        # first of them on, but its text is complete only after the last
        last = {id(req): i for i, (req, _) in enumerate(events)}
        for i, (req, token) in enumerate(events):
            job = self._jobs.get(req)
            if job is None:
                continue
            piece = job.decoder.feed(token)
            if req.params.logprobs is not None and token not in job.eos and req.logprobs:
                job.pending.append(req.logprobs[-1])
            if piece:
                job.send(("text", piece, job.pending))
                job.pending = []
            if job.decoder.stopped and not req.finished:
                self.engine.abort(req)  # frees its blocks now
            if req.finished and last[id(req)] == i:
                self._finish(req, job)

    def _finish(self, req: Request, job: Job) -> None:
        tail = job.decoder.flush()
        if tail:
            job.send(("text", tail, job.pending))
        reason = "stop" if job.decoder.stopped else FINISH_REASONS.get(req.finish_reason, "stop")
        job.send(("done", reason, len(req.output)))
        self._jobs.pop(req, None)
        self.count("completed")
        self.count("completion_tokens", len(req.output))

    def _fail_all(self, err: APIError) -> None:
        for req, job in list(self._jobs.items()):
            self.engine.abort(req)
            job.send(("error", err))
            self.count("failed")
        self._jobs.clear()

    def _publish(self) -> None:
        e = self.engine
        self.snapshot = {
            "running": len(e.running), "waiting": len(e.waiting),
            "kv_blocks_total": e.cache.num_blocks, "kv_blocks_free": e.cache.num_free_blocks,
            "steps": e.stats["steps"], "updated": time.time(),
        }
