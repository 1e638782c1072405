"""Reading a request body: only `Content-Type: application/json` (415 otherwise: a web page can
send text/plain or form bodies to a local server without a CORS preflight), at most `limit`
bytes (413), valid JSON without NaN/Infinity, nested at most MAX_DEPTH deep, every string valid
Unicode (a lone surrogate such as "\\ud800" is valid JSON but no tokenizer can read it): 400
otherwise, naming the field."""
from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from .errors import APIError, bad_request, too_large

MAX_DEPTH = 32  # far deeper than any request the API defines (messages[i].content[j].text is 5)


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON; 415 unless JSON, 413 past `limit` bytes (by Content-Length, or as it streams in)."""
    check_content_type(request.headers.get("content-type"))
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError as err:
            raise bad_request(f"invalid Content-Length header: {length!r}") from err
        if declared > limit:
            raise too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
    if not body:
        raise bad_request("the request has no body: send a JSON object")
    return parse_json(bytes(body))


def check_content_type(value: str | None) -> None:
    media = (value or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        shown = f"{value!r}" if value else "none"
        raise APIError(415, f"the request body must be JSON sent with 'Content-Type: application/json' (got {shown})",
                       code="unsupported_media_type")


def parse_json(body: bytes) -> Any:
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        raise bad_request(f"the body is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"the body is not valid JSON: {e}") from e
    check_tree(data)
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check_tree(data: Any) -> None:
    """400 naming the first place nested deeper than MAX_DEPTH, or a string (key or value) that
    is not valid Unicode. Iterative: no recursion on hostile input."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            _check_unicode(value, path)
        elif isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise bad_request(f"the body is nested too deeply at {path or 'the top'} "
                                  f"(at most {MAX_DEPTH} levels)", param=path or None)
            if isinstance(value, dict):
                for k, v in value.items():
                    _check_unicode(k, path)
                    name = k if len(k) <= 64 else k[:64] + "..."
                    stack.append((v, f"{path}.{name}" if path else name, depth + 1))
            else:
                stack.extend((v, f"{path}.{i}" if path else str(i), depth + 1) for i, v in enumerate(value))


def _check_unicode(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        where = path or "the body"
        raise bad_request(f"{where}: not valid Unicode (a lone surrogate {text[e.start]!r} at index {e.start})",
                          param=path or None) from None
