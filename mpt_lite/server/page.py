"""The built-in chat page: static files from mpt_lite/server/static, served at `/` and `/static/NAME`.

The page is the same for everyone and holds no secret, so it is the one thing served without the
API key (the page asks for the key and sends it with its API calls). Only these exact paths are
exempt; everything else, /health included, still needs the key."""
from __future__ import annotations

from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.responses import Response

STATIC = Path(__file__).with_name("static")
FILES = {"index.html": "text/html; charset=utf-8", "chat.js": "text/javascript; charset=utf-8",
         "chat.css": "text/css; charset=utf-8"}
PUBLIC_PATHS = frozenset({"/"} | {f"/static/{name}" for name in FILES})
# Defence in depth: the page inserts model output as text, and even markup that got in by mistake
# could not run inline script or load anything from elsewhere.
HEADERS = {"Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                      "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


def is_public(scope: dict) -> bool:
    """True for a GET or HEAD of the page or one of its files (these need no API key)."""
    return scope.get("method") in ("GET", "HEAD") and scope.get("path") in PUBLIC_PATHS


def page_file(name: str) -> Response:
    """One of the page's files; a name that is not one of them is a 404 (Starlette's HTTPException)."""
    if name not in FILES:
        raise HTTPException(404, "Not Found")
    path = STATIC / name
    if not path.is_file():  # a broken install (package data left out of the wheel)
        raise HTTPException(404, f"the chat page's file {name} is not installed with mpt_lite")
    return Response(path.read_bytes(), media_type=FILES[name], headers=HEADERS)
