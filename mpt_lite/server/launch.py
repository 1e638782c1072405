"""Running the app with uvicorn on a socket bound here (so port 0 works and the real port is
known before the first request), in the foreground (`mpt-lite serve`) or in a thread."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any, Callable, Iterator

import uvicorn


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port); OSError if it is taken."""
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port!r}")
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Server(uvicorn.Server):
    """uvicorn's server, calling on_ready once it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self.on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.on_ready is not None:
            self.on_ready()


def make_server(app: Any, log_level: str = "warning", access_log: bool = False,
                on_ready: Callable[[], None] | None = None) -> Server:
    # loop and http pinned: "auto" would switch to uvloop/httptools whenever another package (Ray
    # Serve) happens to install them, changing the server's behaviour with the environment
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, timeout_graceful_shutdown=5,
                            lifespan="on", loop="asyncio", http="h11")
    return Server(config, on_ready)


@contextlib.contextmanager
def server_thread(app: Any, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 30.0,
                  **kw: Any) -> Iterator[str]:
    """Serves `app` from a thread for the duration of the block; yields the base URL."""
    sock = bind_socket(host, port)
    server = make_server(app, **kw)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="mpt-lite-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
