"""`mpt-lite serve`: an OpenAI-compatible HTTP server over the Engine. Needs the `serve` extra
(pip install 'mpt_lite[serve]': fastapi, uvicorn)."""
from __future__ import annotations

try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"the server needs fastapi and uvicorn ({e.name} is missing): "
                      "pip install 'mpt_lite[serve]'") from None

from .app import create_app  # noqa: E402
from .launch import bind_socket, make_server, server_thread  # noqa: E402

__all__ = ["create_app", "bind_socket", "make_server", "server_thread"]
