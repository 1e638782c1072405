"""The `mpt-lite` command: generate, chat, serve, quantize, info.

Every error ends the command with one line on stderr and a non-zero exit status; set
MPT_LITE_DEBUG=1 to see the traceback instead."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterable

PROG = "mpt-lite"
BITS_CHOICES = ("4", "8", "none")
GROUP_SIZE_CHOICES = (32, 64, 128)
GROUP_SIZE_HELP = ("with --bits 4 --quant-type int4 (the default): in_features per scale, 32 (default, 4.5 bits per "
                   "weight), 64 (4.25: faster decoding, slightly lower quality) or 128 (4.125)")


class CliError(Exception):
    """An error the user can fix; printed as one line."""


# ---- argument parsing ----

# runtime.kv_budget.KV_DTYPE_NAMES (not imported here: `--help` stays free of torch)
KV_DTYPE_CHOICES = ("float32", "bfloat16", "float16", "int8", "int4")
KV_DTYPE_ENV = "MPT_LITE_KV_DTYPE"


@contextlib.contextmanager
def kv_dtype_env(name: str | None):
    """--kv-dtype reaches every engine the command builds (and Ray replicas) as MPT_LITE_KV_DTYPE, for the
    command's duration."""
    if name is None:
        yield
        return
    before = os.environ.get(KV_DTYPE_ENV)
    os.environ[KV_DTYPE_ENV] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(KV_DTYPE_ENV, None)
        else:
            os.environ[KV_DTYPE_ENV] = before


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Fast, quantized, local inference of MosaicML MPT models.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def model_args(sp: argparse.ArgumentParser, bits_default: str = "4") -> None:
        sp.add_argument("--model", "-m", default=None,
                        help="a folder, hub id (mosaicml/mpt-7b) or alias (mpt-7b-chat); default: the embedded model")
        sp.add_argument("--bits", choices=BITS_CHOICES, default=bits_default,
                        help=f"weight format: 4-bit, int8 or none (unquantized); default {bits_default}")
        sp.add_argument("--quant-type", choices=("int4", "nf4"), default=None, help="4-bit format (default int4)")
        sp.add_argument("--embedding-bits", type=int, choices=(4, 6, 8), default=None,
                        help="with --bits 4: the tied embedding at 8 bits (default), 6 (CPU) or 4")
        sp.add_argument("--group-size", type=int, choices=GROUP_SIZE_CHOICES, default=None, help=GROUP_SIZE_HELP)
        sp.add_argument("--device", default="cpu", help="cpu or cuda")
        sp.add_argument("--kv-dtype", choices=KV_DTYPE_CHOICES, default=None,
                        help="the KV cache's dtype (default: MPT_LITE_KV_DTYPE, else the model's float dtype); int8 "
                             "decodes long contexts ~2x faster than float32, int4 (CPU only) stores 0.6x int8's bytes")

    def sampling_args(sp: argparse.ArgumentParser, max_new: int) -> None:
        sp.add_argument("--max-new-tokens", "-n", type=int, default=max_new)
        sp.add_argument("--temperature", "-t", type=float, default=0.0,
                        help="0 (the default) is greedy decoding; above 0 samples (try 0.7)")
        sp.add_argument("--top-p", type=float, default=0.95)
        sp.add_argument("--top-k", type=int, default=None)
        sp.add_argument("--repetition-penalty", type=float, default=1.0)
        sp.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")

    g = sub.add_parser("generate", help="complete a prompt (streams to stdout)")
    g.add_argument("prompt", nargs="?", default=None, help="the prompt; read from stdin when absent or '-'")
    model_args(g)
    sampling_args(g, 128)
    g.add_argument("--no-stream", action="store_true", help="print the completion at the end")
    g.add_argument("--no-echo", action="store_true", help="print only the completion, not the prompt before it")
    g.add_argument("--stop", action="append", default=None, help="stop before this text (repeatable)")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", help="an interactive chat (/reset clears the history, /exit or Ctrl-D quits)")
    model_args(c)
    sampling_args(c, 256)
    c.add_argument("--system", default=None, help="a system message that starts the conversation")
    speed_args(c, "the system message")
    c.set_defaults(func=cmd_chat)

    s = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions)")
    model_args(s)
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    s.add_argument("--api-key", default=os.environ.get("MPT_LITE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every request (default: $MPT_LITE_API_KEY)")
    s.add_argument("--served-model-name", default=None,
                   help="the model id clients send and /v1/models lists (default: --model, or mpt-lite)")
    s.add_argument("--max-num-seqs", type=int, default=64, help="sequences decoded together (default 64)")
    s.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait beyond the running ones; more get HTTP 429 (default 64)")
    s.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    s.add_argument("--kv-cache-mb", type=float, default=None,
                   help="KV cache budget in MiB (default: room for --max-num-seqs sequences at the model's full "
                        "context, at most half of the memory free at start (RAM, or GPU memory with --device cuda), "
                        "at least one full-context sequence)")
    s.add_argument("--allow-origin", action="append", default=None, metavar="ORIGIN",
                   help="let web pages from ORIGIN (e.g. http://localhost:3000; '*' for any) call the server "
                        "(CORS); repeatable; default none: only non-browser clients and the server's own pages")
    s.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="warning",
                   help="uvicorn's log level; info also logs every request (default warning)")
    s.add_argument("--replicas", type=int, default=None,
                   help="serve N replicas on Ray Serve, each loading the model once (needs the ray extra); "
                        "default: one process, no Ray")
    s.add_argument("--ray-address", default=None,
                   help="with --replicas: an existing Ray cluster ('auto' or ray://host:10001); default: start a "
                        "local Ray instance")
    s.add_argument("--replica-cpus", type=float, default=None,
                   help="with --replicas: CPUs each replica reserves (default: the cluster's CPUs / N, at least 1)")
    speed_args(s, "0")
    s.set_defaults(func=cmd_serve)

    q = sub.add_parser("quantize", help="write a quantized copy of a checkpoint")
    q.add_argument("src", help="the checkpoint: a folder, hub id or alias")
    q.add_argument("dst", help="the folder to write")
    q.add_argument("--bits", choices=("4", "8"), default="4")
    q.add_argument("--quant-type", choices=("int4", "nf4"), default=None, help="4-bit format (default int4)")
    q.add_argument("--embedding-bits", type=int, choices=(4, 6, 8), default=None,
                   help="with --bits 4: the tied embedding at 8 bits (default), 6 (CPU) or 4")
    q.add_argument("--group-size", type=int, choices=GROUP_SIZE_CHOICES, default=None, help=GROUP_SIZE_HELP)
    q.add_argument("--task", default="causal-lm", help="the head to keep (default causal-lm)")
    q.add_argument("--force", action="store_true", help="replace DST if it exists")
    q.set_defaults(func=cmd_quantize)

    i = sub.add_parser("info", help="config, parameter count, sizes per format, CPU features and kernels")
    i.add_argument("--model", "-m", default=None, help="default: the embedded model")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=cmd_info)
    return p


def speed_args(sp: argparse.ArgumentParser, keep_default: str) -> None:
    sp.add_argument("--context-shift", action="store_true",
                    help="past max_seq_len, drop the oldest KV blocks after the first --keep tokens and go on "
                         "(ALiBi models)")
    sp.add_argument("--keep", type=int, default=None, metavar="N",
                    help=f"tokens kept at the start when the context shifts (default: {keep_default})")
    sp.add_argument("--prompt-lookup", type=int, default=None, metavar="K",
                    help="prompt-lookup decoding: draft up to K tokens a step from the text so far (try 10)")


def speed_kwargs(args: argparse.Namespace) -> dict:
    for name in ("keep", "prompt_lookup"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise CliError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    if args.keep is not None and not args.context_shift:
        raise CliError("--keep needs --context-shift")
    return {"context_shift": args.context_shift, "n_keep": args.keep, "prompt_lookup_num_tokens": args.prompt_lookup}


def parse_bits(value: str) -> int | None:
    return None if value == "none" else int(value)


# ---- loading ----

def model_source(name: str | None) -> Any:
    import mpt_lite

    if name is not None:
        return name
    folder = mpt_lite.default_model_path()
    if not (folder / "config.json").is_file():
        raise CliError(f"the embedded default model is missing from {folder} "
                       "(python scripts/train_default_model.py makes it); or pass --model")
    return folder


def model_label(name: str | None) -> str:
    return "the embedded default model" if name is None else name


def check_weight_flags(bits: int | None, quant_type: str | None, embedding_bits: int | None,
                       group_size: int | None) -> None:
    """The 4-bit-only flags need --bits 4 (--group-size: with int4)."""
    if quant_type is not None and bits != 4:
        raise CliError("--quant-type needs --bits 4")
    if embedding_bits is not None and bits != 4:
        raise CliError("--embedding-bits needs --bits 4")
    if group_size is not None and (bits != 4 or quant_type not in (None, "int4")):
        raise CliError("--group-size needs --bits 4 with int4 (the default --quant-type)")


def load_model(name: str | None, bits: int | None, quant_type: str | None, device: str = "cpu",
               task: str = "causal-lm", embedding_bits: int | None = None, group_size: int | None = None):
    import mpt_lite
    from .hub import progress
    from .hub.checkpoint import count_tensors, resolve_checkpoint, weight_files

    check_weight_flags(bits, quant_type, embedding_bits, group_size)
    folder = resolve_checkpoint(model_source(name))
    total = count_tensors(weight_files(folder))
    what = "loading" if bits is None else f"loading and quantizing ({bits}-bit{', ' + quant_type if quant_type else ''})"
    kw = {"quant_type": quant_type} if quant_type is not None else {}
    if embedding_bits is not None:
        kw["embedding_bits"] = embedding_bits
    if group_size is not None:
        kw["group_size"] = group_size
    with progress.track(f"{what} {model_label(name)}", total=total):
        model = mpt_lite.load(folder, bits=bits, task=task, device=device, **kw)
    return model


def sampling_kwargs(args: argparse.Namespace) -> dict:
    from .runtime.sampler import SamplingParams

    if args.max_new_tokens < 0:
        raise CliError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    sampled = dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    common = dict(repetition_penalty=args.repetition_penalty, seed=args.seed)
    SamplingParams(do_sample=True, **sampled, **common)  # every option is checked, even those greedy decoding ignores
    return dict(max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0, **common,
                **(sampled if args.temperature > 0 else {}))


def stream_out(pieces: Iterable[str]) -> tuple[str, float | None]:
    """Writes text pieces to stdout as they come; returns the text and when the first arrived."""
    out, first = [], None
    for piece in pieces:
        if first is None:
            first = time.perf_counter()
        sys.stdout.write(piece)
        sys.stdout.flush()
        out.append(piece)
    return "".join(out), first


def speed_line(n: int, start: float, first: float | None, end: float) -> str:  # n: tokens generated (TextStream)
    total = end - start
    line = f"[{PROG}] {n} tokens in {total:.2f}s ({n / total if total > 0 else 0:.1f} tokens/s)"
    if first is not None and n > 1 and end > first:
        line += f"; first token after {first - start:.2f}s, then {(n - 1) / (end - first):.1f} tokens/s"
    return line


# ---- commands ----

def cmd_generate(args: argparse.Namespace) -> int:
    prompt = args.prompt
    if prompt is None or prompt == "-":
        if sys.stdin.isatty():
            print(f"[{PROG}] reading the prompt from stdin (end with Ctrl-D)", file=sys.stderr)
        prompt = sys.stdin.read()
        if prompt.endswith("\n") and not prompt.endswith("\n\n"):
            prompt = prompt[:-1]  # the newline that ends the input line is not part of the prompt
    if not prompt.strip():
        raise CliError("the prompt is empty")
    kw = sampling_kwargs(args)
    model = load_model(args.model, parse_bits(args.bits), args.quant_type, args.device,
                       embedding_bits=args.embedding_bits, group_size=args.group_size)
    if model.tokenizer is None:
        raise CliError(f"{model_label(args.model)} has no tokenizer.json: generate needs one")
    if not args.no_echo:
        sys.stdout.write(prompt)
        sys.stdout.flush()
    start = time.perf_counter()
    pieces = model.generate(prompt, stream=True, stop=args.stop, **kw)
    if args.no_stream:
        text, first = "".join(pieces), None
        sys.stdout.write(text)
    else:
        text, first = stream_out(pieces)
    end = time.perf_counter()
    sys.stdout.write("\n")
    sys.stdout.flush()
    print(speed_line(pieces.tokens, start, first, end), file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from .runtime.chat_session import ChatSession
    from .text.chat_template import render_chat

    kw = sampling_kwargs(args)
    speed = speed_kwargs(args)
    model = load_model(args.model, parse_bits(args.bits), args.quant_type, args.device,
                       embedding_bits=args.embedding_bits, group_size=args.group_size)
    tok = model.tokenizer
    if tok is None:
        raise CliError(f"{model_label(args.model)} has no tokenizer.json: chat needs one")
    start = [{"role": "system", "content": args.system}] if args.system else []
    render_chat(tok, start or [{"role": "user", "content": ""}])  # fails now, not at the first turn, if no template
    history = list(start)
    # with --context-shift the conversation keeps its KV cache between turns and slides past max_seq_len
    session = ChatSession(model, args.system, **speed, **kw) if args.context_shift else None
    interactive = sys.stdin.isatty()
    print(f"[{PROG}] chatting with {model_label(args.model)}; /reset clears the history, /exit or Ctrl-D quits",
          file=sys.stderr)
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:  # EOF
            if interactive:
                sys.stderr.write("\n")
            return 0
        text = line.rstrip("\r\n")
        command = text.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset":
            history = list(start)
            if session is not None:
                session.reset()
            print(f"[{PROG}] history cleared", file=sys.stderr)
            continue
        if command.startswith("/") and " " not in command:
            print(f"[{PROG}] unknown command {command}; known: /reset, /exit", file=sys.stderr)
            continue
        history.append({"role": "user", "content": text})
        dropped = 0 if session is not None else fit_history(tok, history, len(start), kw["max_new_tokens"], model.config.max_seq_len)
        if dropped:
            print(f"[{PROG}] dropped the {dropped} oldest messages to fit max_seq_len={model.config.max_seq_len}",
                  file=sys.stderr)
        t0 = time.perf_counter()
        try:
            if session is not None:
                reply, first = stream_out(session.send(text, stream=True))
                generated = session.last_reply_tokens
            else:
                pieces = model.chat(history, stream=True, prompt_lookup_num_tokens=args.prompt_lookup, **kw)
                reply, first = stream_out(pieces)
                generated = pieces.tokens
        except ValueError as e:  # e.g. one message longer than the context: report it, keep chatting
            history.pop()
            print(f"\n[{PROG}] error: {one_line(e)}", file=sys.stderr)
            continue
        t1 = time.perf_counter()
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": reply})
        if interactive:
            print(speed_line(generated, t0, first, t1), file=sys.stderr)


def fit_history(tok, history: list[dict], keep: int, max_new: int, max_seq_len: int) -> int:
    """Drops the oldest turns after the first `keep` messages until the prompt plus max_new tokens
    fit in max_seq_len (the newest user message always stays); returns how many were dropped."""
    dropped = 0
    while len(history) > keep + 1:
        n = len(tok.apply_chat_template(history, add_generation_prompt=True, tokenize=True))
        if n + max_new <= max_seq_len:
            break
        del history[keep]
        dropped += 1
    return dropped


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .server import bind_socket, create_app, make_server
        from .server.cors import check_origins
        from .server.launch import url_of
    except ImportError as e:
        raise CliError(str(e)) from e

    for name in ("max_num_seqs", "max_body_bytes"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_queue < 0:
        raise CliError(f"--max-queue must be >= 0, got {args.max_queue}")
    if args.kv_cache_mb is not None and args.kv_cache_mb <= 0:
        raise CliError(f"--kv-cache-mb must be > 0, got {args.kv_cache_mb}")
    if args.api_key is not None and not args.api_key.strip():
        raise CliError("--api-key is empty")
    try:
        check_origins(args.allow_origin)
    except ValueError as e:
        raise CliError(f"--allow-origin: {e}") from e
    if args.replicas is not None:
        return serve_replicas(args)
    if args.ray_address is not None or args.replica_cpus is not None:
        raise CliError("--ray-address and --replica-cpus need --replicas N")
    sock = bind_socket(args.host, args.port)  # before loading: a taken port fails at once
    try:
        model = load_model(args.model, parse_bits(args.bits), args.quant_type, args.device,
                       embedding_bits=args.embedding_bits, group_size=args.group_size)
        if model.tokenizer is None:
            raise CliError(f"{model_label(args.model)} has no tokenizer.json: serve needs one")
        engine_kw: dict[str, Any] = {"max_num_seqs": args.max_num_seqs}
        if args.kv_cache_mb is not None:
            engine_kw["max_bytes"] = int(args.kv_cache_mb * (1 << 20))
        name = args.served_model_name or args.model or "mpt-lite"
        speed = speed_kwargs(args)
        speed["n_keep"] = speed["n_keep"] or 0
        app = create_app(model, model_name=name, api_key=args.api_key, max_queue=args.max_queue,
                         max_body_bytes=args.max_body_bytes, allow_origins=args.allow_origin or (),
                         request_options=speed, **engine_kw)
        url = url_of(sock)
        if args.api_key is None and not is_loopback(args.host):
            print(f"[{PROG}] warning: listening on {args.host} without --api-key: anyone who can reach it "
                  "can use it", file=sys.stderr)

        def ready() -> None:
            print(f"[{PROG}] serving {name} on {url} (OpenAI API under {url}/v1; Ctrl-C stops)",
                  file=sys.stderr, flush=True)

        try:
            make_server(app, log_level=args.log_level, access_log=args.log_level in ("info", "debug"),
                        on_ready=ready).run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn has shut down gracefully and re-raised Ctrl-C
            pass
    finally:
        sock.close()
    print(f"[{PROG}] server stopped", file=sys.stderr)
    return 0


def serve_replicas(args: argparse.Namespace) -> int:
    """`serve --replicas N`: the same app as N replicas on Ray Serve (mpt_lite/server/ray_serve.py)."""
    if args.replicas < 1:
        raise CliError(f"--replicas must be >= 1, got {args.replicas}")
    if args.replica_cpus is not None and args.replica_cpus <= 0:
        raise CliError(f"--replica-cpus must be > 0, got {args.replica_cpus}")
    try:
        from .server.ray_serve import ReplicaSettings, run
    except ImportError as e:
        raise CliError(str(e)) from e
    engine_kw: dict[str, Any] = {"max_num_seqs": args.max_num_seqs}
    if args.kv_cache_mb is not None:
        engine_kw["max_bytes"] = int(args.kv_cache_mb * (1 << 20))
    name = args.served_model_name or args.model or "mpt-lite"
    bits = parse_bits(args.bits)
    check_weight_flags(bits, args.quant_type, args.embedding_bits, args.group_size)
    settings = ReplicaSettings(model=args.model, bits=bits, quant_type=args.quant_type,
                               embedding_bits=args.embedding_bits, group_size=args.group_size, device=args.device,
                               model_name=name, api_key=args.api_key, max_queue=args.max_queue,
                               max_body_bytes=args.max_body_bytes, allow_origins=list(args.allow_origin or ()),
                               request_options={**speed_kwargs(args), "n_keep": speed_kwargs(args)["n_keep"] or 0},
                               engine_kwargs=engine_kw)
    if args.api_key is None and not is_loopback(args.host):
        print(f"[{PROG}] warning: listening on {args.host} without --api-key: anyone who can reach it "
              "can use it", file=sys.stderr)
    print(f"[{PROG}] starting {args.replicas} replica(s) of {name} on Ray Serve"
          f"{' at ' + args.ray_address if args.ray_address else ' (local Ray instance)'} ...", file=sys.stderr, flush=True)
    def ready(url: str) -> None:
        print(f"[{PROG}] serving {name} on {url} (OpenAI API under {url}/v1; Ctrl-C stops)", file=sys.stderr,
              flush=True)

    run(settings, args.replicas, args.host, args.port, ray_address=args.ray_address,
        cpus_per_replica=args.replica_cpus, blocking=True, on_ready=ready)
    print(f"[{PROG}] server stopped", file=sys.stderr)
    return 0


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_quantize(args: argparse.Namespace) -> int:
    bits = int(args.bits)
    dst = Path(args.dst).expanduser()
    src_path = Path(args.src).expanduser()
    if dst.exists() and not args.force:
        raise CliError(f"{dst} already exists; pass --force to replace it")
    if dst.exists() and not dst.is_dir():
        raise CliError(f"{dst} exists and is not a folder")
    if src_path.exists() and (dst.resolve() == src_path.resolve() or dst.resolve() in src_path.resolve().parents):
        raise CliError(f"{dst} is (or holds) the source checkpoint {src_path}; choose another destination")
    model = load_model(args.src, bits, args.quant_type, task=args.task, embedding_bits=args.embedding_bits,
                       group_size=args.group_size)
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    from .hub import progress

    try:
        with progress.track(f"saving to {dst}"):
            model.save_pretrained(tmp)
            if dst.exists():
                shutil.rmtree(dst)
            os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in dst.iterdir() if f.is_file())
    print(f"[{PROG}] wrote {dst} ({size / 1e6:.1f} MB)", file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from . import kernels
    from .hub.checkpoint import resolve_checkpoint, weight_files
    from .config import CONFIG_NAME, MptConfig
    from .model.info import human_bytes, model_info
    from .runtime.kv_budget import kv_bytes_by_dtype

    folder = resolve_checkpoint(model_source(args.model), config_only=True)
    config = MptConfig.from_json_file(folder / CONFIG_NAME)
    info: dict[str, Any] = {"model": model_label(args.model), "folder": str(folder)}
    info.update(model_info(config))
    try:
        files = weight_files(folder)
        info["checkpoint_bytes"] = sum(f.stat().st_size for f in files)
    except FileNotFoundError:
        info["checkpoint_bytes"] = None  # only config.json was fetched
    info["tokenizer_tokens"] = None
    if (folder / "tokenizer.json").is_file():
        from .text.tokenizer import MptTokenizer

        info["tokenizer_tokens"] = len(MptTokenizer.from_pretrained(folder))
    info["config"] = {k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id")}
    info["kv_bytes_per_token"] = kv_bytes_by_dtype(config)
    info["cpu_features"] = kernels.cpu_features()
    info["kernel_variants"] = kernels.supported_isas()
    info["kernel_variant"] = kernels.current_isa()
    info["threads"] = kernels.num_threads()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    c = config
    print(f"model        {info['model']}  ({folder})")
    print(f"architecture d_model {c.d_model}, {c.n_layers} layers, {c.n_heads} heads "
          f"({c.kv_n_heads} kv), ffn {c.ffn_hidden_size}, max_seq_len {c.max_seq_len}, "
          f"{'ALiBi' if c.attn_config['alibi'] else 'learned positions'}, norm {c.norm_type}, "
          f"{'no biases' if c.no_bias else 'biases'}")
    tokens = info["tokenizer_tokens"]
    print(f"vocabulary   {c.vocab_size} embedding rows" + (f", {tokens} tokenizer tokens" if tokens else ""))
    print(f"parameters   {info['parameters']:,} ({info['parameters_without_embedding']:,} without the embedding)")
    if info["checkpoint_bytes"] is not None:
        print(f"checkpoint   {human_bytes(info['checkpoint_bytes'])} on disk")
    sizes = "  ".join(f"{k} {human_bytes(v)}" for k, v in info["bytes"].items())
    print(f"weights      {sizes}")
    bpw = "  ".join(f"{k} {v:.2f}" for k, v in info["block_bits_per_weight"].items())
    print(f"bits/weight  {bpw}  (block Linears: codes + scales)")
    groups = "  ".join(f"{g}: {human_bytes(v)}" for g, v in info["int4_bytes_by_group_size"].items())
    print(f"int4 groups  {groups}  (--group-size: 4.5, 4.25, 4.125 bits a block weight)")
    q4 = info["default_4bit"]
    extra = info["embedding_int8_extra_bytes"][q4]
    print(f"4-bit        {q4} by default (better held-out perplexity and faster than nf4: docs/default_model.md); "
          f"the tied embedding stays int8: +{human_bytes(extra)} (+{100 * extra / max(1, info['bytes'][q4] - extra):.1f}%) "
          f"over --embedding-bits 4; --embedding-bits 6 (CPU) saves {human_bytes(info['embedding_int6_saved_bytes'][q4])}")
    kv = info["kv_bytes_per_token"]
    print("kv cache     a token: " + "  ".join(f"{k} {human_bytes(v)}" for k, v in kv.items())
          + f"; {c.max_seq_len} tokens: " + "  ".join(f"{k} {human_bytes(v * c.max_seq_len)}" for k, v in kv.items())
          + "  (--kv-dtype)")
    feats = " ".join(k for k, v in info["cpu_features"].items() if v) or "none"
    print(f"cpu          {feats}")
    print(f"kernels      {info['kernel_variant']} in use (available: {', '.join(info['kernel_variants'])}); "
          f"{info['threads']} threads")
    return 0


# ---- entry point ----

def one_line(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    return " ".join(msg.split())


def main(argv: list[str] | None = None) -> int:
    debug = os.environ.get("MPT_LITE_DEBUG", "").lower() not in ("", "0", "false", "no")
    args = build_parser().parse_args(argv)
    try:
        with kv_dtype_env(getattr(args, "kv_dtype", None)):
            return args.func(args)
    except KeyboardInterrupt:
        print(f"\n[{PROG}] interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `mpt-lite generate ... | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except Exception as e:  # noqa: BLE001 - the one place errors become messages
        if debug:
            raise
        print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
