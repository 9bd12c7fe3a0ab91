"""Users of the service."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.clock import utc_now
from storage.errors import Conflict, NotFound
from storage.ids import new_id
from storage.tables import User


class UserRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def create(self, *, name: str) -> User:
        name = name.strip()
        if not name:
            raise ValueError("a user needs a non-empty name")
        user = User(id=new_id("usr"), name=name, created_at=utc_now())
        try:
            with self.session.begin_nested():
                self.session.add(user)
        except IntegrityError:
            raise Conflict(f"a user named {name!r} already exists") from None
        return user

    def get(self, *, user_id: str) -> User:
        user = self.session.get(User, user_id)
        if user is None:
            raise NotFound(f"user {user_id} not found")
        return user

    def list_page(self, *, limit: int = 100, after: str | None = None) -> list[User]:
        """A page of users in creation order; ``after`` is the last id of the previous page."""
        query = select(User).order_by(User.created_at, User.id).limit(limit)
        if after is not None:
            cursor = self.get(user_id=after)
            query = query.where(
                (User.created_at > cursor.created_at)
                | ((User.created_at == cursor.created_at) & (User.id > cursor.id))
            )
        return list(self.session.scalars(query))

    def count(self) -> int:
        return self.session.scalar(select(func.count()).select_from(User)) or 0
