"""The OpenAI-compatible app as N replicas on Ray Serve: each replica loads the model once and runs
its own engine; Ray Serve's proxy routes requests (streams included) and replaces replicas that die.

Three ways in:
    mpt-lite serve --replicas 2                       # a local Ray instance, started by the command
    mpt-lite serve --replicas 4 --ray-address auto    # an existing cluster (`ray start --head` ...)
    serve run mpt_lite.server.ray_serve:app_builder model=mpt-7b bits=4 replicas=2

Needs the `ray` extra (pip install 'mpt_lite[ray]'). The single-process server does not import
this module or Ray."""
from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

try:
    from ray import serve
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"serving replicas needs Ray Serve ({e.name} is missing): pip install 'mpt_lite[ray]'") from e

from ..runtime.kv_budget import KV_DTYPE_ENV

DEPLOYMENT_NAME = "mpt-lite"
APP_NAME = "mpt-lite"


@dataclass
class ReplicaSettings:
    """What every replica needs to load the model and build the app (sent to the replicas as is)."""

    model: str | None = None  # folder, hub id or alias; None: the embedded default model
    bits: int | None = 4
    quant_type: str | None = None
    embedding_bits: int | None = None  # bits=4 only: 8 (default), 6 (CPU) or 4 for the tied embedding / lm_head
    group_size: int | None = None  # int4 only: in_features per scale (32 default, 64, 128)
    device: str = "cpu"
    model_name: str = "mpt-lite"
    api_key: str | None = None
    max_queue: int = 64
    max_body_bytes: int = 1 << 20
    allow_origins: list[str] = field(default_factory=list)
    request_options: dict[str, Any] = field(default_factory=dict)  # context_shift, n_keep, prompt_lookup_num_tokens
    engine_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.bits not in (None, 4, 8):
            raise ValueError(f"bits must be 4, 8 or None, got {self.bits!r}")
        if not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ValueError(f"max_queue must be an integer >= 0, got {self.max_queue!r}")


class MptLiteReplica:
    """One replica: the model, its engine thread and the FastAPI app (create_app) in one Ray actor."""

    def __init__(self, settings: dict[str, Any]) -> None:
        import mpt_lite

        from .app import create_app

        s = ReplicaSettings(**settings)
        kw = {k: v for k, v in (("quant_type", s.quant_type), ("embedding_bits", s.embedding_bits),
                                ("group_size", s.group_size)) if v is not None}
        model = mpt_lite.load(s.model, bits=s.bits, device=s.device, **kw)
        if model.tokenizer is None:
            raise ValueError(f"{s.model or 'the model'} has no tokenizer.json: serving needs one")
        self.started = time.time()
        self._mpt_app = create_app(model, model_name=s.model_name, api_key=s.api_key, max_queue=s.max_queue,
                              max_body_bytes=s.max_body_bytes, allow_origins=s.allow_origins,
                              request_options=s.request_options,
                              health_extra=self._replica_health,
                              **s.engine_kwargs)

    def __serve_build_asgi_app__(self):
        return self._mpt_app

    def check_health(self) -> None:
        """Ray calls this periodically: a replica whose engine thread died is restarted."""
        runner = self._mpt_app.state.service.runner
        if not runner.alive:
            raise RuntimeError("the engine thread of this replica is not running")

    async def _replica_health(self) -> dict[str, Any]:
        ctx = serve.get_replica_context()
        info: dict[str, Any] = {"replica": ctx.replica_id.unique_id, "replica_uptime_s": round(time.time() - self.started, 1)}
        try:
            status = await asyncio.wait_for(asyncio.to_thread(serve.status), timeout=2.0)
            dep = status.applications[ctx.app_name].deployments[ctx.deployment]
            info["deployment"] = {"status": str(dep.status.value if hasattr(dep.status, "value") else dep.status),
                                  "replicas": {str(getattr(k, "value", k)): v for k, v in dep.replica_states.items()}}
        except Exception as e:  # noqa: BLE001 - the controller's view is extra information, not health
            info["deployment"] = {"status": "unknown", "error": f"{type(e).__name__}: {e}"}
        return info


def deployment_app(settings: ReplicaSettings, replicas: int, cpus_per_replica: float, threads: int | None = None):
    """The Ray Serve application: `replicas` copies of MptLiteReplica."""
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
        raise ValueError(f"replicas must be a positive integer, got {replicas!r}")
    if not cpus_per_replica > 0:
        raise ValueError(f"cpus per replica must be > 0, got {cpus_per_replica!r}")
    env = {"MPT_LITE_NUM_THREADS": str(threads or max(1, int(cpus_per_replica)))}
    if os.environ.get(KV_DTYPE_ENV):  # `serve --kv-dtype` or the variable itself: the replicas' engines too
        env[KV_DTYPE_ENV] = os.environ[KV_DTYPE_ENV]
    cls = serve.ingress()(MptLiteReplica)
    dep = serve.deployment(cls, name=DEPLOYMENT_NAME, num_replicas=replicas,
                           ray_actor_options={"num_cpus": cpus_per_replica, "runtime_env": {"env_vars": env}},
                           health_check_period_s=2, health_check_timeout_s=30,
                           max_ongoing_requests=settings.engine_kwargs.get("max_num_seqs", 64) + settings.max_queue)
    return dep.bind(asdict(settings))


def app_builder(args: dict[str, str]):
    """For `serve run mpt_lite.server.ray_serve:app_builder key=value ...` and Ray Serve config files.
    Keys: model, bits (4, 8 or none), quant_type, device, model_name, api_key, max_queue,
    max_num_seqs, kv_cache_mb, replicas (default 1), cpus_per_replica (default 1)."""
    known = {"model", "bits", "quant_type", "device", "model_name", "api_key", "max_queue", "max_num_seqs",
             "kv_cache_mb", "replicas", "cpus_per_replica", "threads"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown argument(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    bits = args.get("bits", "4")
    engine: dict[str, Any] = {}
    if "max_num_seqs" in args:
        engine["max_num_seqs"] = int(args["max_num_seqs"])
    if "kv_cache_mb" in args:
        engine["max_bytes"] = int(float(args["kv_cache_mb"]) * (1 << 20))
    settings = ReplicaSettings(model=args.get("model"), bits=None if str(bits).lower() == "none" else int(bits),
                               quant_type=args.get("quant_type"), device=args.get("device", "cpu"),
                               model_name=args.get("model_name", args.get("model") or "mpt-lite"),
                               api_key=args.get("api_key"), max_queue=int(args.get("max_queue", 64)),
                               engine_kwargs=engine)
    return deployment_app(settings, int(args.get("replicas", 1)), float(args.get("cpus_per_replica", 1)),
                          int(args["threads"]) if "threads" in args else None)


def run(settings: ReplicaSettings, replicas: int, host: str, port: int, ray_address: str | None = None,
        cpus_per_replica: float | None = None, blocking: bool = True,
        on_ready: Callable[[str], None] | None = None) -> str:
    """Starts (or joins) Ray, deploys the app and returns its URL; with blocking, serves until Ctrl-C
    or SIGTERM (both take the deployment down, and a Ray instance started here). on_ready(url) runs
    once the replicas answer."""
    import ray

    if not ray.is_initialized():
        if ray_address is None:
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=ray_address, log_to_driver=False, configure_logging=False)
    if cpus_per_replica is None:
        total = ray.cluster_resources().get("CPU", os.cpu_count() or 1)
        cpus_per_replica = max(1.0, float(int(total // replicas))) if total >= replicas else total / replicas
    if port == 0:  # Ray's proxy needs a fixed port: take a free one now
        import socket

        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
    serve.start(http_options={"host": host, "port": port})
    serve.run(deployment_app(settings, replicas, cpus_per_replica), name=APP_NAME, route_prefix="/",
              blocking=False)
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    if on_ready is not None:
        on_ready(url)
    if blocking:
        def stop(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            shutdown()
    return url


def shutdown() -> None:
    """Removes the deployment and disconnects from (or stops the local) Ray."""
    import ray

    serve.shutdown()
    ray.shutdown()
