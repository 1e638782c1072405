"""Errors in the OpenAI shape: ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""
from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


class APIError(Exception):
    """An error a client caused (or the server's limits), sent as OpenAI sends it."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def queue_full(limit: int) -> APIError:
    return APIError(429, f"the server is at capacity: {limit} requests are already waiting; retry later",
                    type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"})


def too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than the limit of {limit} bytes", code="request_too_large")


def unauthorized(reason: str) -> APIError:
    return APIError(401, f"{reason}: send the key as 'Authorization: Bearer <key>'", code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"})


# Statuses Starlette raises itself (unknown route, wrong method), in the same shape.
STATUS_TYPES = {404: ("not_found_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed")}
