"""Fine-tune jobs queued without anyone asking: when a user's data has grown, or on a schedule.

A user's training conversations are what ``collect_conversations`` learns from:
their uploaded examples and the chat answers they liked (rated +1 or preferred).
A specialist is due when its user has ``new_examples`` conversations newer than
its last training, or, with scheduled retraining, when that training is older
than ``retrain_interval`` and anything at all is new. A base model's generalist
is due every ``generalist_interval`` when any user has something new.

"Last training" is the later of the expert's newest version and the newest job
of its target that did not fail or get cancelled: such a job has taken the data
in (or will), a failed or cancelled one has not.

Two rules keep the queue from filling up:

* a target with a job queued or running gets no other, so a busy or slow
  worker never finds the same expert waiting twice;
* after a failed or cancelled job the target waits for a new conversation
  before it is queued again; otherwise a permanent failure (unusable data)
  would come back on every run, and a user's cancel would be undone at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, Subquery, case, exists, func, or_, select, text, union_all
from sqlalchemy.orm import Session

from finetune.settings import FinetuneSettings
from storage.clock import utc_now
from storage.database import Database
from storage.repositories import BaseModelRepository, JobRepository
from storage.repositories.jobs import generalist_target, specialist_target
from storage.tables import (
    Adapter,
    AdapterKind,
    AdapterState,
    AdapterVersion,
    Feedback,
    FineTuneJob,
    JobState,
    Response,
    TrainingExample,
)

THRESHOLD = "threshold"
SCHEDULE = "schedule"
# Only chat answers have turns to learn from (see collect_conversations).
CHAT_ENDPOINT = "chat.completions"
# Any fixed number ("trigger"), distinct from the other advisory lock keys.
_TRIGGER_LOCK = 0x74726967676572
_BUSY = (JobState.QUEUED, JobState.RUNNING)
_NOT_LEARNT = (JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class TriggerPolicy:
    """When jobs are queued automatically; 0 and None turn a rule off."""

    new_examples: int = 0
    retrain_interval: timedelta | None = None
    generalist_interval: timedelta | None = None

    def __post_init__(self) -> None:
        if self.new_examples < 0:
            raise ValueError("new_examples cannot be negative (0 turns the threshold off)")
        for name in ("retrain_interval", "generalist_interval"):
            interval = getattr(self, name)
            # A zero interval would retrain on every new conversation; None says "off".
            if interval is not None and interval <= timedelta(0):
                raise ValueError(f"{name} must be positive (None turns it off)")

    @classmethod
    def from_settings(cls, settings: FinetuneSettings) -> TriggerPolicy:
        return cls(
            new_examples=settings.trigger_new_examples,
            retrain_interval=_hours(settings.retrain_interval_hours),
            generalist_interval=_hours(settings.generalist_interval_hours),
        )

    @property
    def specialists_enabled(self) -> bool:
        return self.new_examples > 0 or self.retrain_interval is not None

    @property
    def enabled(self) -> bool:
        return self.specialists_enabled or self.generalist_interval is not None


def _hours(hours: float) -> timedelta | None:
    return timedelta(hours=hours) if hours > 0 else None


def queue_due_jobs(
    session: Session,
    policy: TriggerPolicy,
    *,
    base_model_id: str,
    now: datetime | None = None,
) -> list[FineTuneJob]:
    """Queue every specialist job and the generalist job of ``base_model_id`` that
    ``policy`` says are due; returns the new jobs (the caller commits)."""
    if not policy.enabled:
        return []
    now = utc_now() if now is None else now
    _serialise_triggers(session)
    busy = set(
        session.scalars(
            select(FineTuneJob.target_key).where(
                FineTuneJob.base_model_id == base_model_id, FineTuneJob.state.in_(_BUSY)
            )
        )
    )
    jobs = JobRepository(session)
    created: list[FineTuneJob] = []
    for user_id, trigger in _due_specialists(session, policy, base_model_id, now):
        if specialist_target(user_id, base_model_id) in busy:
            continue
        job, _ = jobs.create(
            kind=AdapterKind.SPECIALIST,
            base_model_id=base_model_id,
            user_id=user_id,
            trigger=trigger,
        )
        created.append(job)
    if generalist_target(base_model_id) not in busy and _generalist_due(
        session, policy, base_model_id, now
    ):
        job, _ = jobs.create(
            kind=AdapterKind.GENERALIST, base_model_id=base_model_id, user_id=None, trigger=SCHEDULE
        )
        created.append(job)
    return created


def _serialise_triggers(session: Session) -> None:
    """Let one trigger run at a time, so that two workers ticking together cannot
    both see a target idle and queue it twice. SQLite transactions already run
    one at a time (BEGIN IMMEDIATE); PostgreSQL gets a transaction-scoped lock."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _TRIGGER_LOCK})


def _due_specialists(
    session: Session, policy: TriggerPolicy, base_model_id: str, now: datetime
) -> list[tuple[str, str]]:
    """(user id, trigger) of each user whose specialist is due, by user id."""
    if not policy.specialists_enabled:
        return []
    conversations = _conversations()
    history = _training_history(AdapterKind.SPECIALIST, base_model_id).subquery("history")
    since_trained = or_(history.c.trained_at.is_(None), conversations.c.at > history.c.trained_at)
    since_tried = or_(history.c.tried_at.is_(None), conversations.c.at > history.c.tried_at)
    query = (
        select(conversations.c.user_id, history.c.trained_at, func.count())
        .select_from(conversations)
        .outerjoin(history, history.c.user_id == conversations.c.user_id)
        .where(since_trained)
        .group_by(conversations.c.user_id, history.c.trained_at)
        .having(func.count(case((since_tried, 1))) > 0)
        .order_by(conversations.c.user_id)
    )
    due: list[tuple[str, str]] = []
    # The schedule refreshes experts trained before; a user's first expert
    # waits for the threshold, or for the user to ask.
    for user_id, trained_at, new in session.execute(query):
        if policy.new_examples and new >= policy.new_examples:
            due.append((user_id, THRESHOLD))
        elif (
            policy.retrain_interval is not None
            and trained_at is not None
            and trained_at <= now - policy.retrain_interval
        ):
            due.append((user_id, SCHEDULE))
    return due


def _generalist_due(
    session: Session, policy: TriggerPolicy, base_model_id: str, now: datetime
) -> bool:
    if policy.generalist_interval is None:
        return False
    history = _training_history(AdapterKind.GENERALIST, base_model_id).subquery("history")
    trained_at, tried_at = session.execute(
        select(func.max(history.c.trained_at), func.max(history.c.tried_at))
    ).one()
    if trained_at is not None and trained_at > now - policy.generalist_interval:
        return False
    # Unlike a specialist, a generalist has no other trigger: its first job
    # comes from the schedule too.
    conversations = _conversations()
    anything_new = exists().select_from(conversations)
    if tried_at is not None:
        anything_new = anything_new.where(conversations.c.at > tried_at)
    return bool(session.scalar(select(anything_new)))


def _conversations() -> Subquery:
    """(user_id, at) for every training conversation of every user; ``at`` is when
    it became one: its upload, or the first time the answer was liked (liking the
    same answer again adds no conversation)."""
    uploaded = select(
        TrainingExample.user_id.label("user_id"), TrainingExample.created_at.label("at")
    )
    liked = (
        select(Feedback.user_id, func.min(Feedback.created_at))
        .join(Response, Response.id == Feedback.response_id)
        .where(
            or_(Feedback.rating == 1, Feedback.preferred_over_id.is_not(None)),
            Response.endpoint == CHAT_ENDPOINT,
        )
        .group_by(Feedback.user_id, Feedback.response_id)
    )
    return union_all(uploaded, liked).subquery("conversations")


def _training_history(
    kind: AdapterKind, base_model_id: str
) -> Select[tuple[str | None, datetime | None, datetime | None]]:
    """Per user (None for a generalist): ``trained_at``, when the expert last took
    the data in, and ``tried_at``, when its training was last attempted at all."""
    versions = (
        select(
            Adapter.user_id.label("user_id"),
            AdapterVersion.created_at.label("at"),
            (AdapterVersion.state != AdapterState.FAILED).label("learnt"),
        )
        .join(Adapter, Adapter.id == AdapterVersion.adapter_id)
        .where(Adapter.kind == kind, Adapter.base_model_id == base_model_id)
    )
    jobs = select(
        FineTuneJob.user_id, FineTuneJob.created_at, FineTuneJob.state.not_in(_NOT_LEARNT)
    ).where(FineTuneJob.kind == kind, FineTuneJob.base_model_id == base_model_id)
    attempts = union_all(versions, jobs).subquery("attempts")
    return select(
        attempts.c.user_id,
        func.max(case((attempts.c.learnt, attempts.c.at))).label("trained_at"),
        func.max(attempts.c.at).label("tried_at"),
    ).group_by(attempts.c.user_id)


BaseModelIds = Sequence[str] | Callable[[], Iterable[str]]


class JobTrigger:
    """Queues due jobs for each base model; the worker loop calls ``run_once`` now and then.

    ``base_model_ids`` is a list, or a function asked on every run; None means
    every enabled base model, as registered when the run starts.
    """

    def __init__(
        self,
        database: Database,
        policy: TriggerPolicy,
        base_model_ids: BaseModelIds | None = None,
    ) -> None:
        if isinstance(base_model_ids, str):
            raise TypeError("base_model_ids is a list of ids, not one id")
        self.database = database
        self.policy = policy
        self._base_model_ids = base_model_ids

    def run_once(self) -> list[str]:
        """Queue what is due now; returns the new jobs' ids (committed)."""
        if not self.policy.enabled:
            return []
        created: list[str] = []
        for base_model_id in self._current_base_models():
            # One transaction per model: what one model queued stays queued
            # even if another model's run fails.
            with self.database.session() as session:
                jobs = queue_due_jobs(session, self.policy, base_model_id=base_model_id)
                created += [job.id for job in jobs]
        return created

    def _current_base_models(self) -> list[str]:
        if self._base_model_ids is None:
            with self.database.session() as session:
                return [model.id for model in BaseModelRepository(session).list_all()]
        if callable(self._base_model_ids):
            return list(self._base_model_ids())
        return list(self._base_model_ids)
