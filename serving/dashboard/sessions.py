"""Dashboard sign-in: a signed, expiring session cookie and the CSRF token tied to it.

The admin key is typed once, at ``POST /admin/login``; from then on the
browser carries only a session: an opaque id, who signed in and when it ends,
signed with HMAC-SHA256. Nothing of the key is in the cookie. The session is
re-checked on every request: a revoked admin key, a rotated bootstrap key or
a sign-out ends it at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from serving.auth import BOOTSTRAP_ADMIN, Principal
from storage.cache import Cache
from storage.database import Database
from storage.settings import Settings
from storage.tables import ApiKey, Scope

COOKIE_NAME = "tailor_admin_session"
# The cookie goes to the dashboard and the admin API only, never to /v1.
COOKIE_PATH = "/admin"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FORM_FIELD = "csrf_token"
_ENDED_PREFIX = "admin-session-ended:"


@dataclass(frozen=True)
class AdminSession:
    session_id: str
    # The stored admin key that signed in, or None for the bootstrap key.
    key_id: str | None
    # For the bootstrap key: a hash of it, so that rotating it ends its sessions.
    key_fingerprint: str | None
    expires_at: float


class SessionSigner:
    """Issues and reads session cookies with one secret.

    ``clock`` is wall-clock time (seconds since the epoch), not monotonic: the
    expiry travels in the cookie and must mean the same in every process that
    reads it. Tests inject a fake one.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        lifetime_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the session secret must be at least 16 bytes")
        self._secret = secret
        self.lifetime_seconds = lifetime_seconds
        self._clock = clock

    @classmethod
    def from_settings(
        cls, settings: Settings, *, clock: Callable[[], float] = time.time
    ) -> SessionSigner:
        if settings.session_secret is not None:
            secret = settings.session_secret.get_secret_value().encode()
        elif settings.admin_key is not None:
            # Derived, so that every process with the same admin key accepts the
            # same sessions, and a new admin key ends the old ones.
            admin_key = settings.admin_key.get_secret_value().encode()
            secret = hmac.new(admin_key, b"tailor dashboard session", hashlib.sha256).digest()
        else:
            secret = secrets.token_bytes(32)
        return cls(secret, lifetime_seconds=settings.admin_session_minutes * 60, clock=clock)

    def now(self) -> float:
        return self._clock()

    def issue(self, principal: Principal, *, settings: Settings) -> str:
        fingerprint = None
        if principal.key_id is None:
            fingerprint = key_fingerprint(settings)
        payload = {
            "sid": secrets.token_urlsafe(18),
            "kid": principal.key_id,
            "fp": fingerprint,
            "exp": self._clock() + self.lifetime_seconds,
        }
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{self._sign(body)}"

    def read(self, cookie: str) -> AdminSession | None:
        """The session in a cookie, or None if it is forged, malformed or expired."""
        body, _, signature = cookie.partition(".")
        if not body or not hmac.compare_digest(signature, self._sign(body)):
            return None
        try:
            payload = json.loads(_unb64(body))
            session = AdminSession(
                session_id=str(payload["sid"]),
                key_id=payload["kid"],
                key_fingerprint=payload["fp"],
                expires_at=float(payload["exp"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires_at <= self._clock():
            return None
        return session

    def csrf_token(self, session: AdminSession) -> str:
        return self._sign(f"csrf:{session.session_id}")

    def csrf_matches(self, session: AdminSession, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token, self.csrf_token(session))

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self._secret, text.encode(), hashlib.sha256).digest())


def key_fingerprint(settings: Settings) -> str | None:
    if settings.admin_key is None:
        return None
    return hashlib.sha256(settings.admin_key.get_secret_value().encode()).hexdigest()[:32]


def session_principal(
    session: AdminSession, *, database: Database, settings: Settings, cache: Cache
) -> Principal | None:
    """Who the session speaks for now, or None when it has ended."""
    if cache.get(_ENDED_PREFIX + session.session_id) is not None:
        return None
    if session.key_id is None:
        current = key_fingerprint(settings)
        if current is None or session.key_fingerprint is None:
            return None
        return BOOTSTRAP_ADMIN if hmac.compare_digest(current, session.key_fingerprint) else None
    with database.session() as db:
        key = db.get(ApiKey, session.key_id)
        if key is None or key.revoked or Scope.ADMIN.value not in key.scopes:
            return None
        return Principal.of_key(key)


def end_session(session: AdminSession, *, cache: Cache, now: float) -> None:
    """Sign-out: the session is refused from now until it would have expired anyway."""
    remaining = max(1.0, session.expires_at - now)
    cache.set(_ENDED_PREFIX + session.session_id, b"1", ttl_seconds=remaining)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
