"""A user's training data from SQL: their examples and the chat answers they liked,
or, for a job of the OpenAI-shaped API, the uploaded file it names."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from finetune.errors import DatasetError
from models.chat_format import Message
from storage.errors import NotFound
from storage.repositories import ExampleRepository, FeedbackRepository, TrainingFileRepository
from storage.tables import TrainingExample


@dataclass(frozen=True)
class Conversation:
    messages: list[Message]
    created_at: datetime
    source: str  # "example" or "feedback"


def collect_conversations(session: Session, *, user_id: str) -> list[Conversation]:
    """What a user's specialist learns from, oldest first: their uploaded examples,
    and the chat answers they rated +1 or preferred (the answer they liked)."""
    found = [
        Conversation(list(example.messages), example.created_at, "example")
        for example in _all_examples(session, user_id)
    ]
    for response in FeedbackRepository(session).liked_responses(user_id=user_id):
        # A text completion has no turns to learn an answer from.
        if response.endpoint != "chat.completions":
            continue
        messages = [
            {"role": str(m["role"]), "content": str(m["content"])}
            for m in response.request.get("messages", [])
        ]
        messages.append({"role": "assistant", "content": response.output_text})
        found.append(Conversation(messages, response.created_at, "feedback"))
    return sorted(found, key=lambda c: c.created_at)


def _all_examples(session: Session, user_id: str) -> list[TrainingExample]:
    examples: list[TrainingExample] = []
    repository = ExampleRepository(session)
    while page := repository.list_page(
        user_id=user_id, after_id=examples[-1].id if examples else 0, limit=1000
    ):
        examples += page
    return examples


def file_conversations(
    session: Session, *, user_id: str, file_id: str, source: str
) -> list[Conversation]:
    """The conversations of one of the user's uploaded files, in the order of its lines
    (a file has no time order of its own: its last lines are the newest)."""
    repository = TrainingFileRepository(session)
    try:
        training_file = repository.get_for_user(file_id=file_id, user_id=user_id)
    except NotFound:
        raise DatasetError(f"the {source.replace('_', ' ')} {file_id} was deleted") from None
    created = training_file.created_at
    return [
        Conversation(
            [{"role": str(m["role"]), "content": str(m["content"])} for m in messages],
            created,
            source,
        )
        for messages in training_file.conversations
    ]
