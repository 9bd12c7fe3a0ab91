"""Dashboard sessions: one row per sign-in, the only record of whether it has ended.

A session counts only while its row exists and has no ``ended_at``; the
signed cookie names the row and carries its expiry. Ending a session is a
write to SQL, so it holds across cache flushes, restarts and processes.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from storage.tables import AdminSessionRecord


class AdminSessionRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def start(
        self,
        *,
        session_id: str,
        key_id: str | None,
        key_fingerprint: str | None,
        created_at: datetime,
        expires_at: datetime,
    ) -> AdminSessionRecord:
        """Record a sign-in; rows that have expired by ``created_at`` go at the same time."""
        self.purge_expired(now=created_at)
        record = AdminSessionRecord(
            id=session_id,
            key_id=key_id,
            key_fingerprint=key_fingerprint,
            created_at=created_at,
            expires_at=expires_at,
        )
        self.session.add(record)
        self.session.flush()
        return record

    def find_live(self, *, session_id: str) -> AdminSessionRecord | None:
        """The session's row unless it is missing or ended (one primary-key read)."""
        return self.session.scalar(
            select(AdminSessionRecord).where(
                AdminSessionRecord.id == session_id, AdminSessionRecord.ended_at.is_(None)
            )
        )

    def end(self, *, session_id: str, now: datetime) -> None:
        """End one session; ending it again keeps the first ``ended_at``."""
        self.session.execute(
            update(AdminSessionRecord)
            .where(AdminSessionRecord.id == session_id, AdminSessionRecord.ended_at.is_(None))
            .values(ended_at=now)
        )

    def purge_expired(self, *, now: datetime) -> None:
        """Delete the rows of sessions that have expired, ended or not."""
        self.session.execute(delete(AdminSessionRecord).where(AdminSessionRecord.expires_at <= now))
