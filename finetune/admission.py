"""Is there something to learn? Checked when a specialist job is queued.

Without it a job for a user with no examples was accepted and failed minutes
later, when a worker took it. What can be known from SQL alone is checked here,
at the door, with the reason the user needs to act on:

- enough conversations (examples and liked chat answers) to split into train,
  validation and test (``MIN_CONVERSATIONS``, the split's own rule);
- something new since the last job that succeeded for the same user and base
  model with the same hyperparameters: that job's data and seed would train
  the same adapter again.

A job of the OpenAI-shaped API trains on one uploaded file instead
(``check_file_data``): the file must hold enough conversations, and the same
file (and validation file) with the same hyperparameters after a job that
succeeded on them would train the same adapter again. The two kinds of job
never count as each other's "last job": they learn from different data.

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
from storage.tables import AdapterKind, FineTuneJob, JobState, TrainingFile


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
            FineTuneJob.training_file_id.is_(None),
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


def check_file_data(
    session: Session,
    *,
    user_id: str,
    base_model_id: str,
    training_file: TrainingFile,
    validation_file: TrainingFile | None,
    hyperparameters: dict[str, Any],
) -> int:
    """The number of conversations a job on ``training_file`` would learn from (and be
    tested on); raises ``DatasetError`` when it could not learn anything new."""
    count = training_file.conversation_count
    if count < MIN_CONVERSATIONS:
        raise DatasetError(
            f"the training file {training_file.id} has {count} conversation(s); at least "
            f"{MIN_CONVERSATIONS} are needed (to train, validate and test on)"
        )
    validation_id = None if validation_file is None else validation_file.id
    same = session.scalar(
        select(FineTuneJob)
        .where(
            FineTuneJob.user_id == user_id,
            FineTuneJob.base_model_id == base_model_id,
            FineTuneJob.state == JobState.SUCCEEDED,
            FineTuneJob.training_file_id == training_file.id,
            (
                FineTuneJob.validation_file_id.is_(None)
                if validation_id is None
                else FineTuneJob.validation_file_id == validation_id
            ),
        )
        .order_by(FineTuneJob.created_at.desc(), FineTuneJob.id.desc())
        .limit(1)
    )
    if same is not None and same.hyperparameters == hyperparameters:
        raise DatasetError(
            f"job {same.id} already trained on file {training_file.id} with the same "
            "hyperparameters: it would train the same adapter; change the file, the "
            "hyperparameters or the seed"
        )
    return count
