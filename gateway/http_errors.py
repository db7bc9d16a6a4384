"""OpenAI's error body, for HTTP responses and for the last event of a failed stream."""
from __future__ import annotations

from fastapi.responses import JSONResponse


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error object, for responses and for the last event of a failed stream."""
    kind = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
            404: "invalid_request_error",
            405: "invalid_request_error", 429: "rate_limit_error", 499: "cancelled",
            503: "service_unavailable"}.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error(status: int, message: str, param: str | None = None, code: str | None = None,
          headers: dict | None = None) -> JSONResponse:
    if status == 429 or status == 503:  # OpenAI clients honour it when they retry
        headers = {"Retry-After": "1", **(headers or {})}
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)
