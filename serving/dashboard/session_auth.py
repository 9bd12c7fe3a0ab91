"""A request signed in by the dashboard's cookie: who it is, and whether it is same-site.

A cookie is sent by the browser whoever made the page that sends it, so a
state-changing request carried by a cookie must also prove it came from a
dashboard page: it carries the session's CSRF token (a header from scripts,
a form field from the sign-out form), and its Origin, when sent, is ours.
"""

from __future__ import annotations

from fastapi import Request

from serving.auth import Principal
from serving.dashboard.sessions import (
    CSRF_HEADER,
    AdminSession,
    SessionSigner,
    session_principal,
)
from serving.errors import ApiError
from serving.services import Services

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def read_session(
    cookie: str | None, *, services: Services, signer: SessionSigner
) -> tuple[AdminSession, Principal] | None:
    """The live session in ``cookie`` and its principal, or None."""
    if cookie is None:
        return None
    session = signer.read(cookie)
    if session is None:
        return None
    principal = session_principal(session, database=services.database, settings=services.settings)
    return None if principal is None else (session, principal)


def dashboard_principal(
    request: Request, cookie: str, *, services: Services, signer: SessionSigner
) -> Principal:
    signed_in = read_session(cookie, services=services, signer=signer)
    if signed_in is None:
        raise ApiError(
            401, "the dashboard session has ended: sign in again", code="session_expired"
        )
    session, principal = signed_in
    if request.method not in SAFE_METHODS:
        check_same_site(request, signer, session, token=request.headers.get(CSRF_HEADER))
    return principal


def check_same_site(
    request: Request, signer: SessionSigner, session: AdminSession, *, token: str | None
) -> None:
    origin = request.headers.get("origin")
    if origin is not None and origin != own_origin(request):
        raise ApiError(403, "cross-site request refused", code="csrf_failed")
    if not signer.csrf_matches(session, token):
        raise ApiError(
            403,
            f"missing or wrong CSRF token: send the page's token as {CSRF_HEADER}",
            code="csrf_failed",
        )


def own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"
