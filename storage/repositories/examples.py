"""Users' training examples (chat transcripts the fine-tune worker learns from)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.clock import utc_now
from storage.tables import TrainingExample


class ExampleRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add_many(
        self, *, user_id: str, examples: Sequence[list[dict[str, Any]]], source: str = "api"
    ) -> list[TrainingExample]:
        """Store examples in one transaction: all of them or, on error, none."""
        now = utc_now()
        rows = [
            TrainingExample(user_id=user_id, messages=messages, source=source, created_at=now)
            for messages in examples
        ]
        self.session.add_all(rows)
        self.session.flush()
        return rows

    def count(self, *, user_id: str, since_id: int = 0) -> int:
        query = (
            select(func.count())
            .select_from(TrainingExample)
            .where(TrainingExample.user_id == user_id, TrainingExample.id > since_id)
        )
        return self.session.scalar(query) or 0

    def list_page(
        self, *, user_id: str, limit: int = 100, after_id: int = 0
    ) -> list[TrainingExample]:
        """A page of the user's examples, oldest first; ``after_id`` continues a page."""
        query = (
            select(TrainingExample)
            .where(TrainingExample.user_id == user_id, TrainingExample.id > after_id)
            .order_by(TrainingExample.id)
            .limit(limit)
        )
        return list(self.session.scalars(query))
