"""Dashboard sign-in: a signed, expiring session cookie and the CSRF token tied to it.

The admin key is typed once, at ``POST /admin/login``; from then on the
browser carries only a session: an opaque id, who signed in and when it ends,
signed with HMAC-SHA256. Nothing of the key is in the cookie.

Invariants:

- A session is live only while its SQL row (``admin_sessions``) exists and
  is not ended, its cookie has not expired, and the key that signed in is
  still an admin key (for the bootstrap key: the same key). All of it is
  re-checked on every request, with no cached copy in between, so a
  sign-out, a revoked key or a rotated bootstrap key ends it at once, in
  every process, and a cache flush or a restart brings nothing back.
- A cookie whose payload is not exactly what ``issue`` writes (field names,
  types, lengths, a finite expiry) is no session: it never raises.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from serving.auth import BOOTSTRAP_ADMIN, Principal
from serving.settings import Settings
from storage.database import Database
from storage.repositories import AdminSessionRepository
from storage.tables import ApiKey, Scope

COOKIE_NAME = "tailor_admin_session"
# The cookie goes to the dashboard and the admin API only, never to /v1.
COOKIE_PATH = "/admin"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FORM_FIELD = "csrf_token"
# What the cookie's string fields may hold: URL-safe ids (token_urlsafe, key
# ids, hex fingerprints) no longer than the columns of admin_sessions. Nothing
# else reaches a query, so no odd character can trip the database driver.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PAYLOAD_FIELDS = frozenset({"sid", "kid", "fp", "exp"})


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
        if settings.server.session_secret is not None:
            secret = settings.server.session_secret.get_secret_value().encode()
        elif settings.server.admin_key is not None:
            # Derived, so that every process with the same admin key accepts the
            # same sessions, and a new admin key ends the old ones.
            admin_key = settings.server.admin_key.get_secret_value().encode()
            secret = hmac.new(admin_key, b"tailor dashboard session", hashlib.sha256).digest()
        else:
            secret = secrets.token_bytes(32)
        return cls(secret, lifetime_seconds=settings.server.admin_session_minutes * 60, clock=clock)

    def now(self) -> float:
        return self._clock()

    def new_session(self, principal: Principal, *, settings: Settings) -> AdminSession:
        """A fresh session for ``principal``, not yet recorded (see ``begin_session``)."""
        return AdminSession(
            session_id=secrets.token_urlsafe(18),
            key_id=principal.key_id,
            key_fingerprint=key_fingerprint(settings) if principal.key_id is None else None,
            expires_at=self._clock() + self.lifetime_seconds,
        )

    def encode(self, session: AdminSession) -> str:
        payload = {
            "sid": session.session_id,
            "kid": session.key_id,
            "fp": session.key_fingerprint,
            "exp": session.expires_at,
        }
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{self._sign(body)}"

    def read(self, cookie: str) -> AdminSession | None:
        """The session in a cookie, or None if it is forged, malformed or expired."""
        body, _, signature = cookie.partition(".")
        # Bytes: compare_digest refuses str with non-ASCII characters.
        if not body or not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            return None
        try:
            payload = json.loads(_unb64(body))
        except ValueError:
            return None
        session = _session_of(payload)
        if session is None or session.expires_at <= self._clock():
            return None
        return session

    def csrf_token(self, session: AdminSession) -> str:
        return self._sign(f"csrf:{session.session_id}")

    def csrf_matches(self, session: AdminSession, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(
            token.encode(), self.csrf_token(session).encode()
        )

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self._secret, text.encode(), hashlib.sha256).digest())


def _session_of(payload: object) -> AdminSession | None:
    """The session a verified payload describes, or None unless it is exactly well-formed."""
    if not isinstance(payload, dict) or payload.keys() != _PAYLOAD_FIELDS:
        return None
    session_id, key_id, fingerprint = payload["sid"], payload["kid"], payload["fp"]
    if not _is_token(session_id):
        return None
    if not (key_id is None or _is_token(key_id)) or not (
        fingerprint is None or _is_token(fingerprint)
    ):
        return None
    # Exactly one says who signed in: a stored key, or the bootstrap key's fingerprint.
    if (key_id is None) == (fingerprint is None):
        return None
    expires_at = _finite_number(payload["exp"])
    if expires_at is None:
        return None
    return AdminSession(
        session_id=session_id, key_id=key_id, key_fingerprint=fingerprint, expires_at=expires_at
    )


def _is_token(value: object) -> bool:
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def _finite_number(value: object) -> float | None:
    # bool is an int to Python, not an expiry; NaN never compares as expired.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def key_fingerprint(settings: Settings) -> str | None:
    if settings.server.admin_key is None:
        return None
    return hashlib.sha256(settings.server.admin_key.get_secret_value().encode()).hexdigest()[:32]


def begin_session(
    principal: Principal, *, signer: SessionSigner, database: Database, settings: Settings
) -> str:
    """Sign-in: records a new session and returns its cookie.

    The row is committed before the cookie exists, so a cookie never names a
    session that a later request would not find.
    """
    session = signer.new_session(principal, settings=settings)
    with database.session() as db:
        AdminSessionRepository(db).start(
            session_id=session.session_id,
            key_id=session.key_id,
            key_fingerprint=session.key_fingerprint,
            created_at=_utc(signer.now()),
            expires_at=_utc(session.expires_at),
        )
    return signer.encode(session)


def session_principal(
    session: AdminSession, *, database: Database, settings: Settings
) -> Principal | None:
    """Who the session speaks for now, or None when it has ended (read from SQL alone)."""
    with database.session() as db:
        record = AdminSessionRepository(db).find_live(session_id=session.session_id)
        if (
            record is None
            or record.key_id != session.key_id
            or record.key_fingerprint != session.key_fingerprint
        ):
            return None
        if session.key_id is None:
            current = key_fingerprint(settings)
            if current is None or session.key_fingerprint is None:
                return None
            same_key = hmac.compare_digest(current.encode(), session.key_fingerprint.encode())
            return BOOTSTRAP_ADMIN if same_key else None
        key = db.get(ApiKey, session.key_id)
        if key is None or key.revoked or Scope.ADMIN.value not in key.scopes:
            return None
        return Principal.of_key(key)


def end_session(session: AdminSession, *, database: Database, now: float) -> None:
    """Sign-out: the session's row is marked ended, for every process and for good."""
    with database.session() as db:
        AdminSessionRepository(db).end(session_id=session.session_id, now=_utc(now))


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
