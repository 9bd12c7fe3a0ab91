"""``/admin/``: the dashboard's pages, sign-in and sign-out.

``/admin/users``, ``/admin/adapters``, ``/admin/jobs`` and ``/admin/router``
are both pages and admin API lists (docs/api.md). A browser's navigation (it asks
for HTML and sends no Authorization header) gets the page; everything else
falls through to the JSON route of the same path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Scope

from serving.auth import authenticate
from serving.dashboard.session_auth import check_same_site, read_session
from serving.dashboard.sessions import COOKIE_NAME, COOKIE_PATH, begin_session, end_session
from serving.dashboard.shell import PAGES, SECURITY_HEADERS, Page, login_html, page_html
from serving.deps import ServicesDep, SessionSignerDep
from serving.errors import ApiError

# Guessing a strong key is hopeless; this slows guessing a weak one.
LOGIN_ATTEMPTS_PER_MINUTE = 10


def wants_html(scope: Scope) -> bool:
    headers = dict(scope.get("headers", []))
    if b"authorization" in headers:
        return False
    return b"text/html" in headers.get(b"accept", b"")


class HtmlPageRoute(APIRoute):
    """Matches only a browser's request for a page; API clients reach the JSON route."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is Match.FULL and not wants_html(scope):
            return Match.NONE, {}
        return match, child_scope


router = APIRouter(prefix="/admin", tags=["dashboard"], include_in_schema=False)
pages_router = APIRouter(route_class=HtmlPageRoute, include_in_schema=False)


@router.get("", include_in_schema=False)
def dashboard_root() -> RedirectResponse:
    return RedirectResponse("/admin/", status_code=308)


@router.get("/login")
def login_page(request: Request, services: ServicesDep, signer: SessionSignerDep) -> Response:
    next_path = safe_next(request.query_params.get("next"))
    if read_session(request.cookies.get(COOKIE_NAME), services=services, signer=signer):
        return RedirectResponse(next_path, status_code=303)
    return HTMLResponse(login_html(next_path=next_path), headers=SECURITY_HEADERS)


@router.post("/login")
def login(
    request: Request,
    services: ServicesDep,
    signer: SessionSignerDep,
    key: Annotated[str, Form(max_length=500)],
    next: Annotated[str, Form(max_length=2000)] = "/admin/",
) -> Response:
    next_path = safe_next(next)
    # The connecting address: the server rewrites it from X-Forwarded-For only
    # when the peer is a proxy listed in TAILOR_FORWARDED_ALLOW_IPS, so a client
    # cannot pick its own bucket by sending the header.
    client = request.client.host if request.client else "unknown"
    bucket = services.cache.take_tokens(
        f"admin-login:{client}",
        capacity=LOGIN_ATTEMPTS_PER_MINUTE,
        refill_per_second=LOGIN_ATTEMPTS_PER_MINUTE / 60,
    )
    if not bucket.allowed:
        return _login_refused(next_path, "Too many attempts: wait a minute and try again.", 429)
    try:
        principal = authenticate(
            key.strip(), database=services.database, settings=services.settings
        )
    except ApiError:
        return _login_refused(next_path, "That key is not valid.", 401)
    if not principal.is_admin:
        return _login_refused(next_path, "That key is not an admin key.", 403)
    lifetime = signer.lifetime_seconds
    cookie = begin_session(
        principal, signer=signer, database=services.database, settings=services.settings
    )
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        COOKIE_NAME,
        cookie,
        max_age=int(lifetime),
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
def logout(
    request: Request,
    services: ServicesDep,
    signer: SessionSignerDep,
    csrf_token: Annotated[str | None, Form(max_length=200)] = None,
) -> Response:
    signed_in = read_session(request.cookies.get(COOKIE_NAME), services=services, signer=signer)
    if signed_in is not None:
        session, _ = signed_in
        # Another site must not be able to sign an admin out either.
        check_same_site(request, signer, session, token=csrf_token)
        end_session(session, database=services.database, now=signer.now())
    response = RedirectResponse("/admin/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, path=COOKIE_PATH)
    return response


def _login_refused(next_path: str, message: str, status: int) -> HTMLResponse:
    return HTMLResponse(
        login_html(next_path=next_path, error=message), status_code=status, headers=SECURITY_HEADERS
    )


def safe_next(path: str | None) -> str:
    """Where to go after signing in: a dashboard path of this server, never another site."""
    if (
        not path
        or not path.startswith("/admin")
        or path.startswith("/admin/login")
        or "//" in path
        or "\\" in path
    ):
        return "/admin/"
    return path


def _page_handler(page: Page) -> Callable[..., Response]:
    # Not async: reading the session touches the database and the cache.
    def show(request: Request, services: ServicesDep, signer: SessionSignerDep) -> Response:
        signed_in = read_session(request.cookies.get(COOKIE_NAME), services=services, signer=signer)
        if signed_in is None:
            return RedirectResponse(f"/admin/login?next={quote(page.path)}", status_code=303)
        session, _ = signed_in
        html = page_html(page, csrf_token=signer.csrf_token(session))
        return HTMLResponse(html, headers=SECURITY_HEADERS)

    show.__name__ = f"{page.name}_page"
    return show


for _page in PAGES:
    # The overview's path is no API list: it is a page whoever asks.
    _owner = router if _page.path == "/admin/" else pages_router
    _owner.add_api_route(
        _page.path.removeprefix(_owner.prefix), _page_handler(_page), methods=["GET"]
    )
