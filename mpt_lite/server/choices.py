"""The messages of a request's jobs (one per choice, n of them) turned into OpenAI's response: one
whole object, or a stream of chunks with each choice's pieces tagged by its index as they come."""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable, Sequence

from .logprob_format import LogprobFormat
from .protocol import Reply
from .runner import Job


async def merged(jobs: Sequence[Job]) -> AsyncIterator[tuple[int, tuple]]:
    """(choice index, message) from all jobs, in the order they arrive, until each has ended."""
    if len(jobs) == 1:
        while True:
            msg = await jobs[0].next()
            yield 0, msg
            if msg[0] in ("done", "error"):
                return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, job: Job) -> None:
        while True:
            msg = await job.next()
            queue.put_nowait((i, msg))
            if msg[0] in ("done", "error"):
                return

    tasks = [asyncio.create_task(pump(i, j)) for i, j in enumerate(jobs)]
    try:
        left = len(jobs)
        while left:
            i, msg = await queue.get()
            if msg[0] in ("done", "error"):
                left -= 1
            yield i, msg
    finally:
        for t in tasks:
            t.cancel()


async def collect(jobs: Sequence[Job], reply: Reply, n_prompt: int, formats: Sequence[LogprobFormat | None],
                  echo: str = "") -> dict:
    texts: list[list[str]] = [[echo] for _ in jobs]
    lps: list[list[dict]] = [[] for _ in jobs]
    choices: list[dict[str, Any] | None] = [None] * len(jobs)
    completion = 0
    async for i, msg in merged(jobs):
        if msg[0] == "text":
            texts[i].append(msg[1])
            if formats[i] is not None:
                lps[i].append(formats[i].render(msg[2]))
        elif msg[0] == "done":
            completion += msg[2]
            lp = LogprobFormat.merge(lps[i], reply.chat) if formats[i] is not None else None
            choices[i] = reply.choice(i, "".join(texts[i]), msg[1], lp)
        elif msg[0] == "error":
            raise msg[1]
    return reply.whole(choices, n_prompt, completion)


async def stream_chunks(jobs: Sequence[Job], reply: Reply, n_prompt: int, include_usage: bool,
                        formats: Sequence[LogprobFormat | None], echo: str = "") -> AsyncIterator[dict]:
    for i in range(len(jobs)):
        if reply.chat:
            yield reply.chunk("", first=True, index=i)
        elif echo:
            yield reply.chunk(echo, index=i)
    completion = 0
    render: Callable[[int, Any], dict | None] = lambda i, e: formats[i].render(e) if formats[i] is not None else None
    async for i, msg in merged(jobs):
        if msg[0] == "text":
            yield reply.chunk(msg[1], index=i, logprobs=render(i, msg[2]))
        elif msg[0] == "done":
            completion += msg[2]
            yield reply.chunk(None if reply.chat else "", finish_reason=msg[1], index=i)
        elif msg[0] == "error":
            yield msg[1].body()
            return
    if include_usage:
        yield reply.usage_chunk(n_prompt, completion)
