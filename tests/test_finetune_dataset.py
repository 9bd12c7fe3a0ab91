"""Training conversations on the real tokenizers: only answers are learnt, the
prompt is exactly what serving sends, and the splits follow time."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import AutoTokenizer

from finetune.conversations import (
    IGNORED,
    TokenizedConversation,
    split_by_time,
    tokenize_conversation,
)
from finetune.dataset import collect_conversations
from finetune.errors import ConversationTooLong, DatasetError
from models.chat_format import prompt_ids
from storage.database import Database
from storage.repositories import ExampleRepository, FeedbackRepository
from tests.server import prepared_model_store
from tests.test_repositories import add_base_model, add_response, add_user

CHAT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Spain?"},
    {"role": "assistant", "content": "Madrid."},
]


# Loading a tokenizer takes seconds (Gemma's most): every test that takes one is slow.
@pytest.fixture(
    scope="module",
    params=[
        pytest.param(name, marks=pytest.mark.slow)
        for name in ("smollm2-135m-instruct", "gemma-3-270m")
    ],
)
def tokenizer(request: pytest.FixtureRequest) -> Any:
    return AutoTokenizer.from_pretrained(prepared_model_store() / request.param)


def learnt_text(tokenizer: Any, example: TokenizedConversation) -> str:
    ids = [
        t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORED
    ]
    return str(tokenizer.decode(ids, skip_special_tokens=True))


def test_only_the_answers_are_learnt(tokenizer: Any) -> None:
    example = tokenize_conversation(tokenizer, CHAT, max_length=512)
    assert len(example.input_ids) == len(example.labels)
    learnt = learnt_text(tokenizer, example)
    assert "Paris." in learnt and "Madrid." in learnt
    assert "Capital" not in learnt and "Spain" not in learnt and "briefly" not in learnt
    # Learnt tokens are the inputs themselves (the model shifts them).
    assert all(
        label in (IGNORED, token)
        for token, label in zip(example.input_ids, example.labels, strict=True)
    )


def test_the_prompt_part_is_what_serving_sends(tokenizer: Any) -> None:
    example = tokenize_conversation(tokenizer, CHAT[:3], max_length=512)
    served = prompt_ids(tokenizer, CHAT[:2])
    assert example.input_ids[: len(served)] == served
    assert set(example.labels[: len(served)]) == {IGNORED}
    assert example.answer_tokens == len(example.input_ids) - len(served)


def test_bad_conversations_are_refused(tokenizer: Any) -> None:
    with pytest.raises(DatasetError, match="assistant"):
        tokenize_conversation(tokenizer, CHAT[:2], max_length=512)
    with pytest.raises(ConversationTooLong, match="more than the 8"):
        tokenize_conversation(tokenizer, CHAT, max_length=8)


def test_splits_follow_time_and_refuse_tiny_sets() -> None:
    items = [TokenizedConversation([i], [i]) for i in range(20)]
    split = split_by_time(items)
    # Small sets keep a test split the gate can judge on (at least 5 conversations).
    assert [len(split.train), len(split.validation), len(split.test)] == [13, 2, 5]
    assert split.train[-1].input_ids == [12] and split.test[0].input_ids == [15]
    big = split_by_time([TokenizedConversation([i], [i]) for i in range(100)])
    assert [len(big.train), len(big.validation), len(big.test)] == [80, 10, 10]
    smallest = split_by_time(items[:10])
    assert [len(smallest.train), len(smallest.validation), len(smallest.test)] == [3, 2, 5]
    with pytest.raises(DatasetError, match="at least 10"):
        split_by_time(items[:9])
    with pytest.raises(ValueError):
        split_by_time(items, validation_fraction=0.6, test_fraction=0.5)


def test_a_users_examples_and_liked_answers_are_collected_oldest_first(
    database: Database,
) -> None:
    add_base_model(database, "tiny-1m")
    owner, other = add_user(database, "writer"), add_user(database, "stranger")
    with database.session() as session:
        ExampleRepository(session).add_many(
            user_id=owner,
            examples=[[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]],
        )
    for response_id, user in (("r-liked", owner), ("r-meh", owner), ("r-theirs", other)):
        add_response(database, user, response_id)
    with database.session() as session:
        feedback = FeedbackRepository(session)
        feedback.record(user_id=owner, response_id="r-liked", rating=1)
        feedback.record(user_id=owner, response_id="r-meh", rating=-1)
        feedback.record(user_id=other, response_id="r-theirs", rating=1)
    with database.session() as session:
        found = collect_conversations(session, user_id=owner)
    assert [c.source for c in found] == ["example", "feedback"]
    assert found[0].messages[-1] == {"role": "assistant", "content": "Yo"}
    # The liked answer: the logged prompt, then what the model said.
    assert found[1].messages == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
