"""A bounded load test of `mpt-lite serve`, from a second process, over loopback only.

By default it starts `mpt-lite serve` itself (a subprocess on 127.0.0.1, a free port, the
embedded default model) and stops it at the end; --url points it at a server already running
on this machine instead. It sends --requests streaming requests (completions and chats,
alternating), at most --concurrency at a time, within --time-limit seconds, and reports
throughput, time to first token (p50/p99) and whole-request latency. Every request must end
with a finish_reason and `data: [DONE]`; any that does not is reported as lost (exit status 1).

    python benchmarks/load_test_server.py --requests 300 --concurrency 32 --max-tokens 32
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["def fibonacci(n):", "class Parser:", "import os\n\ndef main():", "def read_file(path):",
           "for i in range(10):", "def __init__(self, name):", "with open(path) as f:", "try:\n    import json"]
CHATS = ["Write a function that adds two numbers.", "How do I read a file?", "Sort a list of tuples.",
         "What does `yield` do?"]


@dataclass
class Result:
    ok: bool
    status: int
    ttft: float | None = None
    latency: float | None = None
    tokens: int = 0
    error: str = ""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None, help="a running server (loopback only); default: start one")
    p.add_argument("--api-key", default=None)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--time-limit", type=float, default=300, help="the whole run ends by then (seconds)")
    p.add_argument("--server-args", default="--bits none --max-num-seqs 32",
                   help="arguments for the `mpt-lite serve` this script starts")
    args = p.parse_args(argv)
    if not 1 <= args.requests <= 5000:
        p.error("--requests must be in 1..5000")
    if not 1 <= args.concurrency <= 512:
        p.error("--concurrency must be in 1..512")
    if not 0 < args.time_limit <= 3600:
        p.error("--time-limit must be in (0, 3600]")
    if args.url is not None and not is_loopback_url(args.url):
        p.error(f"--url must be a loopback address (127.0.0.1, ::1, localhost), got {args.url}")
    return args


def is_loopback_url(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def start_server(server_args: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "mpt_lite.cli", "serve", "--host", "127.0.0.1", "--port", "0",
           "--served-model-name", "mpt-lite", *server_args.split()]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300  # Ray Serve replicas (--replicas N) take a while to start
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise RuntimeError(f"mpt-lite serve exited with status {proc.returncode}")
        if " serving " in line:
            return proc, line.split(" on ")[1].split()[0]
    proc.kill()
    raise RuntimeError("mpt-lite serve did not start within 300 s")


def request_body(i: int, max_tokens: int) -> tuple[str, dict]:
    common = {"model": "mpt-lite", "max_tokens": max_tokens, "temperature": 0, "stream": True,
              "stream_options": {"include_usage": True}}
    if i % 2:
        return "/v1/chat/completions", {**common, "messages": [{"role": "user", "content": CHATS[i % len(CHATS)]}]}
    return "/v1/completions", {**common, "prompt": PROMPTS[i % len(PROMPTS)]}


async def one(client: httpx.AsyncClient, i: int, max_tokens: int) -> Result:
    path, body = request_body(i, max_tokens)
    t0 = time.perf_counter()
    ttft, finish, tokens, done = None, None, 0, False
    try:
        async with client.stream("POST", path, json=body) as r:
            if r.status_code != 200:
                return Result(False, r.status_code, error=(await r.aread()).decode()[:200])
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    return Result(False, 200, error=event["error"]["message"])
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
                for c in event["choices"]:
                    text = c["delta"].get("content") if "delta" in c else c.get("text")
                    if text and ttft is None:
                        ttft = time.perf_counter() - t0
                    finish = c.get("finish_reason") or finish
    except httpx.HTTPError as e:
        return Result(False, 0, error=f"{type(e).__name__}: {e}")
    latency = time.perf_counter() - t0
    ok = done and finish in ("stop", "length")
    return Result(ok, 200, ttft, latency, tokens, "" if ok else "no finish_reason or [DONE]")


async def run(url: str, args: argparse.Namespace) -> tuple[list[Result], float]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    gate = asyncio.Semaphore(args.concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits,
                                 timeout=httpx.Timeout(args.time_limit)) as client:
        async def gated(i: int) -> Result:
            async with gate:
                return await one(client, i, args.max_tokens)

        t0 = time.perf_counter()
        results = await asyncio.wait_for(asyncio.gather(*(gated(i) for i in range(args.requests))), args.time_limit)
        return results, time.perf_counter() - t0


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def main(argv=None) -> int:
    args = parse_args(argv)
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args.server_args)
    try:
        results, wall = asyncio.run(run(url, args))
        health = httpx.get(f"{url}/health", headers={"Authorization": f"Bearer {args.api_key}"} if args.api_key
                           else {}, timeout=10).json()
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=90)  # Ray Serve takes its replicas down first
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stderr.close()
    ok = [r for r in results if r.ok]
    lost = [r for r in results if not r.ok]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    lat = [r.latency for r in ok]
    tokens = sum(r.tokens for r in ok)
    print(f"requests      {len(results)} sent, {len(ok)} complete, {len(lost)} lost "
          f"(concurrency {args.concurrency}, max_tokens {args.max_tokens}, streaming, greedy)")
    print(f"wall time     {wall:.2f} s")
    print(f"throughput    {len(ok) / wall:.1f} requests/s, {tokens / wall:.0f} output tokens/s ({tokens} tokens)")
    if ttft:
        print(f"first token   p50 {pct(ttft, 50) * 1e3:.0f} ms, p99 {pct(ttft, 99) * 1e3:.0f} ms")
    if lat:
        print(f"latency       p50 {pct(lat, 50) * 1e3:.0f} ms, p99 {pct(lat, 99) * 1e3:.0f} ms")
    print(f"server        {health.get('counters')}, {health.get('steps')} engine steps")
    for r in lost[:5]:
        print(f"lost: status {r.status}: {r.error}", file=sys.stderr)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
