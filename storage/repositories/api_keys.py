"""API keys: issued once in clear, stored as SHA-256, refused at once when revoked."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from storage.clock import utc_now
from storage.errors import NotFound
from storage.ids import new_id
from storage.tables import ApiKey, Scope, User

KEY_PREFIX = "tlr_"
# How many leading characters of a key are kept in clear, to tell keys apart.
VISIBLE_PREFIX_LENGTH = 12


def generate_api_key() -> str:
    """A new secret key: 256 random bits, URL-safe, recognisable by its prefix."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeyRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def create(
        self, *, user_id: str, scopes: Sequence[Scope] = (Scope.USER,)
    ) -> tuple[ApiKey, str]:
        """Issue a key for a user; returns the row and the only copy of the secret."""
        if self.session.get(User, user_id) is None:
            raise NotFound(f"user {user_id} not found")
        secret = generate_api_key()
        key = ApiKey(
            id=new_id("key"),
            user_id=user_id,
            key_hash=hash_api_key(secret),
            prefix=secret[:VISIBLE_PREFIX_LENGTH],
            scopes=sorted({Scope(s).value for s in scopes}),
            created_at=utc_now(),
        )
        self.session.add(key)
        self.session.flush()
        return key, secret

    def find_valid(self, *, secret: str) -> ApiKey | None:
        """The unrevoked key with this secret, or None; its user comes in the same query,
        so a request that needs the user's settings (routing preferences) reads no more."""
        key = self.session.scalar(
            select(ApiKey)
            .options(joinedload(ApiKey.user))
            .where(ApiKey.key_hash == hash_api_key(secret))
        )
        if key is None or key.revoked:
            return None
        return key

    def get(self, *, key_id: str) -> ApiKey:
        key = self.session.get(ApiKey, key_id)
        if key is None:
            raise NotFound(f"key {key_id} not found")
        return key

    def list_for_user(self, *, user_id: str) -> list[ApiKey]:
        query = select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at)
        return list(self.session.scalars(query))

    def revoke(self, *, key_id: str) -> ApiKey:
        """Revoke a key; revoking twice keeps the first revocation time."""
        key = self.get(key_id=key_id)
        if key.revoked_at is None:
            key.revoked_at = utc_now()
            self.session.flush()
        return key
