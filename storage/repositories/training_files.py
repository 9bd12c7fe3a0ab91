"""Users' uploaded training files (``POST /v1/files``) and the jobs that use them.

A file is one user's: every read names the user, and another user's file is
``NotFound``, never visible. A file is deleted only while no queued or running
job trains on it; the row of the file is locked first, so a job queued at the
same moment either sees the file or is seen by the delete (PostgreSQL; SQLite
serialises writers anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from storage.clock import utc_now
from storage.errors import Conflict, NotFound
from storage.ids import new_id
from storage.tables import FineTuneJob, JobState, TrainingFile

FINE_TUNE_PURPOSE = "fine-tune"
_BUSY = (JobState.QUEUED, JobState.RUNNING)


class TrainingFileRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(
        self,
        *,
        user_id: str,
        filename: str,
        content: bytes,
        conversations: Sequence[list[dict[str, Any]]],
        purpose: str = FINE_TUNE_PURPOSE,
    ) -> TrainingFile:
        """Store a validated file: its bytes as sent and its conversations parsed."""
        if not conversations:
            raise ValueError("a training file holds at least one conversation")
        row = TrainingFile(
            id=new_id("file"),
            user_id=user_id,
            purpose=purpose,
            filename=filename,
            size_bytes=len(content),
            conversation_count=len(conversations),
            content=content,
            conversations=list(conversations),
            created_at=utc_now(),
        )
        self.session.add(row)
        self.session.flush()
        return row

    def get_for_user(self, *, file_id: str, user_id: str, lock: bool = False) -> TrainingFile:
        """The user's file; ``lock`` holds its row until the transaction ends."""
        query = select(TrainingFile).where(
            TrainingFile.id == file_id, TrainingFile.user_id == user_id
        )
        if lock:
            query = query.with_for_update()
        row = self.session.scalar(query)
        if row is None:
            raise NotFound(f"file {file_id} not found")
        return row

    def list_page(
        self,
        *,
        user_id: str,
        limit: int,
        after: str | None = None,
        order: Literal["asc", "desc"] = "desc",
        purpose: str | None = None,
    ) -> list[TrainingFile]:
        """A page of the user's files by creation time; ``after`` is the last file id
        of the previous page (one of the user's, else ``NotFound``)."""
        newest_first = order == "desc"
        query = select(TrainingFile).where(TrainingFile.user_id == user_id)
        if purpose is not None:
            query = query.where(TrainingFile.purpose == purpose)
        if after is not None:
            cursor = self.get_for_user(file_id=after, user_id=user_id)
            if newest_first:
                query = query.where(
                    (TrainingFile.created_at < cursor.created_at)
                    | (
                        (TrainingFile.created_at == cursor.created_at)
                        & (TrainingFile.id < cursor.id)
                    )
                )
            else:
                query = query.where(
                    (TrainingFile.created_at > cursor.created_at)
                    | (
                        (TrainingFile.created_at == cursor.created_at)
                        & (TrainingFile.id > cursor.id)
                    )
                )
        if newest_first:
            query = query.order_by(TrainingFile.created_at.desc(), TrainingFile.id.desc())
        else:
            query = query.order_by(TrainingFile.created_at, TrainingFile.id)
        return list(self.session.scalars(query.limit(limit)))

    def busy_jobs(self, *, file_id: str) -> list[FineTuneJob]:
        """The queued or running jobs that train or validate on the file."""
        query = select(FineTuneJob).where(
            FineTuneJob.state.in_(_BUSY),
            or_(FineTuneJob.training_file_id == file_id, FineTuneJob.validation_file_id == file_id),
        )
        return list(self.session.scalars(query))

    def delete(self, *, file_id: str, user_id: str) -> None:
        """Delete the user's file, unless a queued or running job uses it (``Conflict``)."""
        row = self.get_for_user(file_id=file_id, user_id=user_id, lock=True)
        busy = self.busy_jobs(file_id=file_id)
        if busy:
            names = ", ".join(f"{job.id} ({job.state.value})" for job in busy)
            raise Conflict(
                f"file {file_id} is used by fine-tuning job(s) {names}; cancel them or wait "
                "until they end"
            )
        self.session.delete(row)
        self.session.flush()

    def conversations(self, *, file_id: str, user_id: str) -> list[list[dict[str, Any]]]:
        """What a job trains on: the file's conversations, in the order of its lines."""
        return list(self.get_for_user(file_id=file_id, user_id=user_id).conversations)
