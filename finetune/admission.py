"""Is there something to learn? Checked when a specialist job is queued.

Without it a job for a user with no examples was accepted and failed minutes
later, when a worker took it. What can be known from SQL alone is checked here,
at the door, with the reason the user needs to act on:

- enough conversations (examples and liked chat answers) to split into train,
  validation and test (``MIN_CONVERSATIONS``, the split's own rule);
- something new since the last job that succeeded for the same user and base
  model with the same hyperparameters: that job's data and seed would train
  the same adapter again.

What needs the base model's tokenizer (a conversation longer than the model
takes) is the worker's: it leaves such a conversation out and says so in the
job's ``dataset`` event, failing only if too few remain.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from finetune.conversations import MIN_CONVERSATIONS
from finetune.dataset import collect_conversations
from finetune.errors import DatasetError
from storage.tables import AdapterKind, FineTuneJob, JobState


def check_specialist_data(
    session: Session, *, user_id: str, base_model_id: str, hyperparameters: dict[str, Any]
) -> int:
    """The number of conversations a new specialist job would learn from; raises
    ``DatasetError`` when the job could not learn anything new."""
    conversations = collect_conversations(session, user_id=user_id)
    if len(conversations) < MIN_CONVERSATIONS:
        raise DatasetError(
            f"{len(conversations)} conversation(s) to learn from (uploaded examples and liked "
            f"chat answers); at least {MIN_CONVERSATIONS} are needed"
        )
    last = session.scalar(
        select(FineTuneJob)
        .where(
            FineTuneJob.user_id == user_id,
            FineTuneJob.kind == AdapterKind.SPECIALIST,
            FineTuneJob.base_model_id == base_model_id,
            FineTuneJob.state == JobState.SUCCEEDED,
        )
        .order_by(FineTuneJob.created_at.desc(), FineTuneJob.id.desc())
        .limit(1)
    )
    newest = conversations[-1].created_at
    if last is not None and last.hyperparameters == hyperparameters and newest <= last.created_at:
        raise DatasetError(
            f"nothing new to learn since job {last.id} (no example or liked answer added since "
            "it was queued, and the same hyperparameters): it would train the same adapter; "
            "add data or change the hyperparameters"
        )
    return len(conversations)
