"""The edge of every request: how large its body may be, and what text its
path, query and headers may hold.

A pure ASGI middleware, so that it runs for every route (JSON bodies,
multipart uploads, raw-body routes, static files) before anything reads or
parses the body:

- A body over its limit is answered 413 ``too_large``: at once when
  ``Content-Length`` says so, else as soon as the bytes that have streamed in
  pass it (chunked bodies), so that no huge body is ever parsed or tokenised.
  The limit is ``TAILOR_MAX_REQUEST_BYTES``, except on the routes that take
  larger bodies by design, which get their own limit when it is larger.
- A NUL or a lone surrogate (``serving.request_text``) in the decoded path or
  a query parameter, or a NUL in a header value, is answered 400
  ``invalid_parameter`` naming it: the same refusal on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from urllib.parse import parse_qsl

from fastapi import FastAPI
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import BodyTooLarge, error_response
from serving.request_text import printable, text_problem
from serving.routes import examples, files
from serving.services import Services

# The multipart framing and text fields of an adapter upload, beyond its files.
MULTIPART_ALLOWANCE = 1 << 20
# adapter_config.json, adapter_model.safetensors and tailor_gate.safetensors.
ADAPTER_UPLOAD_FILES = 3


def adapter_upload_bytes(max_file_bytes: int) -> int:
    """The largest upload whose every file is within the registry's file limit."""
    return ADAPTER_UPLOAD_FILES * max_file_bytes + MULTIPART_ALLOWANCE


class RequestLimits:
    """Refuses over-large bodies and unacceptable path, query and header text."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        route_body_bytes: Mapping[tuple[str, str], Callable[[], int]] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Read at each request: a route's own limit may change while serving.
        self.route_body_bytes = dict(route_body_bytes or {})

    def body_limit(self, method: str, path: str) -> int:
        larger = self.route_body_bytes.get((method, path.rstrip("/") or "/"))
        return self.max_body_bytes if larger is None else max(self.max_body_bytes, larger())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = parameter_problem(scope)
        if problem is not None:
            await error_response(400, problem, code="invalid_parameter")(scope, receive, send)
            return
        limit = self.body_limit(scope["method"], _route_path(scope))
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _too_large(limit)(scope, receive, send)
            return

        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            # The app's handler answers it (serving.errors); this is for a
            # body read where no handler reaches.
            if started:
                raise
            await _too_large(limit)(scope, receive, send)


def install_request_limits(app: FastAPI, services: Services) -> None:
    """Put ``RequestLimits`` in front of every route of ``app``."""
    registry = services.adapters
    app.add_middleware(
        RequestLimits,
        max_body_bytes=services.settings.server.max_request_bytes,
        route_body_bytes={
            ("POST", "/v1/examples"): lambda: examples.MAX_BODY_BYTES,
            ("POST", "/v1/files"): lambda: files.MAX_UPLOAD_BYTES,
            ("POST", "/admin/adapters"): lambda: adapter_upload_bytes(
                registry.limits.max_file_bytes
            ),
        },
    )


def parameter_problem(scope: Scope) -> str | None:
    """What is wrong with the request's path, query or headers, or None."""
    problem = text_problem(scope["path"])
    if problem is not None:
        return f"{_path_parameter_name(scope)}: {problem}"
    query_string: bytes = scope.get("query_string", b"")
    # Decoded as Starlette decodes it, so that the values checked are those
    # the routes will see.
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        problem = text_problem(name) or text_problem(value)
        if problem is not None:
            return f"query parameter {printable(name)}: {problem}"
    for header, value in scope.get("headers", ()):
        if b"\x00" in value:
            return f"header {header.decode('latin-1')}: {text_problem(chr(0))}"
    return None


def _path_parameter_name(scope: Scope) -> str:
    """``path parameter job_id`` when a documented route's template matches, else ``path``."""
    app = scope.get("app")
    if not isinstance(app, FastAPI):
        return "path"
    # The OpenAPI paths are the routes' full templates (prefixes included);
    # built once by FastAPI and cached, and only consulted for a bad path.
    for template in app.openapi().get("paths", {}):
        regex, _, _ = compile_path(template)
        match = regex.match(_route_path(scope))
        if match is None:
            continue
        for name, value in match.groupdict().items():
            if text_problem(value) is not None:
                return f"path parameter {name}"
    return "path"


def _route_path(scope: Scope) -> str:
    """The path as the routes see it: without the ``root_path`` a proxy mounted us at."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _content_length(scope: Scope) -> int | None:
    for header, value in scope.get("headers", ()):
        if header == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses it; the bytes are counted anyway
    return None


def _too_large(limit: int) -> ASGIApp:
    return error_response(413, str(BodyTooLarge(limit).detail), code="too_large")
