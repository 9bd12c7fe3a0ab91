"""The HTTP face of Tailor's errors: every failure becomes the OpenAI error shape.

This is the only place where exceptions meet HTTP statuses. Handlers never
put a stack trace or an internal message of an unexpected error into a
response.
"""

from __future__ import annotations

import logging
from html import escape
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters.errors import (
    AdapterError,
    AdapterNotFound,
    InvalidAdapter,
    InvalidTransition,
    SlotsExhausted,
)
from serving.dashboard.shell import SECURITY_HEADERS
from storage.errors import BackendUnavailable, Conflict, InvalidInput, NotFound

logger = logging.getLogger(__name__)

# How long a client should wait before retrying during a database or cache
# outage: long enough not to hammer a server that is restarting, short enough
# that a blip costs little.
BACKEND_RETRY_AFTER_SECONDS = 5

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
}


class ApiError(Exception):
    """An error answered with ``status`` and the OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


class BodyTooLarge(StarletteHTTPException):
    """A request body that went past its byte limit while it streamed in.

    Raised from the ASGI ``receive`` of ``serving.request_limits``; an
    HTTPException because FastAPI lets those out of its body parsing
    unchanged (any other error there becomes a 400).
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the {limit} byte limit")


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "server_error"),
            "code": code,
        }
    }


def error_response(
    status: int, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, code), status_code=status, headers=headers)


def _backend_unavailable_response(request: Request, exc: BackendUnavailable) -> Response:
    # The message names the setting to look at, never the URL: the host and
    # user of the database are no business of an API caller (the log and
    # /readyz carry the full reason).
    message = f"a backing service ({exc.setting}) is unavailable; try again shortly"
    headers = {"Retry-After": str(BACKEND_RETRY_AFTER_SECONDS)}
    # A browser opening a dashboard page gets a page, as the dashboard's
    # routes decide (serving.dashboard.pages.wants_html); scripts get JSON.
    accept = request.headers.get("accept", "")
    if "authorization" not in request.headers and "text/html" in accept:
        html = (
            "<!doctype html><html lang=en><meta charset=utf-8>"
            "<title>Tailor: unavailable</title>"
            f"<h1>Service unavailable</h1><p>{escape(message)}.</p>"
        )
        return HTMLResponse(html, status_code=503, headers={**SECURITY_HEADERS, **headers})
    return error_response(503, message, code="backend_unavailable", headers=headers)


def _describe_validation_error(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, code=exc.code, headers=exc.headers)

    @app.exception_handler(NotFound)
    async def _not_found(_request: Request, exc: NotFound) -> JSONResponse:
        return error_response(404, str(exc), code="not_found")

    @app.exception_handler(Conflict)
    async def _conflict(_request: Request, exc: Conflict) -> JSONResponse:
        return error_response(409, str(exc), code="conflict")

    @app.exception_handler(InvalidInput)
    async def _invalid_input(_request: Request, exc: InvalidInput) -> JSONResponse:
        return error_response(422, str(exc), code="invalid_input")

    @app.exception_handler(AdapterError)
    async def _adapter_error(_request: Request, exc: AdapterError) -> JSONResponse:
        if isinstance(exc, InvalidAdapter):
            return error_response(422, str(exc), code="invalid_adapter")
        if isinstance(exc, AdapterNotFound):
            return error_response(404, str(exc), code="not_found")
        if isinstance(exc, InvalidTransition):
            return error_response(409, str(exc), code="invalid_transition")
        if isinstance(exc, SlotsExhausted):
            return error_response(503, str(exc), code="overloaded", headers={"Retry-After": "1"})
        return error_response(400, str(exc))

    @app.exception_handler(BackendUnavailable)
    async def _unavailable(request: Request, exc: BackendUnavailable) -> Response:
        logger.error("backend unavailable on %s %s: %s", request.method, request.url.path, exc)
        return _backend_unavailable_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, _describe_validation_error(exc), code="invalid_body")

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_request: Request, exc: BodyTooLarge) -> JSONResponse:
        return error_response(413, str(exc.detail), code="too_large")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, message, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error")
