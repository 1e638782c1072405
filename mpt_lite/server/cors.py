"""Cross-origin requests: answered only for the origins the user allows (`--allow-origin`). With
none, no CORS headers are sent, so a browser refuses to let another site's page read answers or
send JSON requests (a JSON POST needs a preflight, and preflights are not answered); the
server's own pages are same-origin and need no CORS."""
from __future__ import annotations

import re
from typing import Any, Iterable

from starlette.middleware.cors import CORSMiddleware

_ORIGIN = re.compile(r"^https?://[^/\s?#]+$")


def check_origins(origins: Iterable[str] | None) -> list[str]:
    """The origins as given ('http://localhost:3000', or '*' for any), or a ValueError naming a bad one."""
    if origins is None:
        return []
    if isinstance(origins, str):
        origins = [origins]
    out = []
    for o in origins:
        if not isinstance(o, str) or (o != "*" and not _ORIGIN.match(o)):
            raise ValueError(f"an allowed origin is '*' or scheme://host[:port] without a path, got {o!r}")
        out.append(o.rstrip("/"))
    return out


def add_cors(app: Any, origins: list[str]) -> None:
    """Adds the CORS layer (outermost, so that preflights need no API key) when origins are allowed."""
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
