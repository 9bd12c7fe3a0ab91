"""Who is calling: a Bearer key resolved to a principal with scopes."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import timedelta

from serving.errors import ApiError
from serving.settings import Settings
from storage.clock import utc_now
from storage.database import Database
from storage.repositories import ApiKeyRepository
from storage.tables import ApiKey, Scope

# Writing last_used_at on every request would turn each read into a write;
# once every few minutes is enough to tell live keys from dead ones.
LAST_USED_RESOLUTION = timedelta(minutes=5)

BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class RoutingPreferences:
    """A user's stored routing limits, for the fields a request leaves out; None is the
    service's default. Read with the key (``ApiKeyRepository.find_valid`` joins the user),
    so a completion reads the user's row once, at authentication."""

    cost_weight: float | None = None
    max_price: float | None = None
    latency_slo_seconds: float | None = None


@dataclass(frozen=True)
class Principal:
    """The caller: a user's key, or the bootstrap admin key (no user)."""

    user_id: str | None
    key_id: str | None
    scopes: frozenset[Scope]
    # The key's user's routing preferences as of this request (none for admins).
    routing: RoutingPreferences = RoutingPreferences()

    @classmethod
    def of_key(cls, key: ApiKey) -> Principal:
        user = key.user
        return cls(
            user_id=key.user_id,
            key_id=key.id,
            scopes=frozenset(Scope(s) for s in key.scopes),
            routing=RoutingPreferences(
                cost_weight=user.route_cost_weight,
                max_price=user.route_max_price,
                latency_slo_seconds=user.route_latency_slo_seconds,
            ),
        )

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes


BOOTSTRAP_ADMIN = Principal(user_id=None, key_id=None, scopes=frozenset({Scope.ADMIN}))


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise ApiError(
            401,
            "missing API key: send it as 'Authorization: Bearer <key>'",
            code="missing_api_key",
            headers=BEARER_CHALLENGE,
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "malformed Authorization header: expected 'Bearer <key>'",
            code="invalid_api_key",
            headers=BEARER_CHALLENGE,
        )
    return token


def authenticate(token: str, *, database: Database, settings: Settings) -> Principal:
    """Resolve a key to its principal; unknown or revoked keys get 401.

    The key is looked up on every request (one indexed read), with no
    cache in between, so a revoked key is refused from the next request on.
    """
    admin_key = settings.server.admin_key.get_secret_value() if settings.server.admin_key else None
    if admin_key and hmac.compare_digest(token.encode(), admin_key.encode()):
        return BOOTSTRAP_ADMIN
    with database.session() as session:
        key = ApiKeyRepository(session).find_valid(secret=token)
        if key is None:
            raise ApiError(
                401, "invalid or revoked API key", code="invalid_api_key", headers=BEARER_CHALLENGE
            )
        now = utc_now()
        if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
            key.last_used_at = now
        return Principal.of_key(key)
