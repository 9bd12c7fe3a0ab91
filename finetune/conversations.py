"""Conversations as training tokens, the answers marked, split by time.

Free of SQL, so that training and benchmarks run where only torch is.

Only the assistant's answers are learnt (labels elsewhere are -100, ignored by
the loss): the expert should learn how this user wants to be answered, not to
predict the user's own questions. Splits follow time (oldest for training,
newest for testing), so the evaluation asks what a user does next, as serving
will.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from finetune.bootstrap import DEFAULT_CONFIDENCE, fewest_conversations_to_judge
from finetune.errors import ConversationTooLong, DatasetError
from models.chat_format import Message, prompt_ids, transcript

IGNORED = -100  # the label transformers' losses skip


@dataclass(frozen=True)
class TokenizedConversation:
    input_ids: list[int]
    labels: list[int]  # the token where it is learnt, IGNORED elsewhere
    # The user turn the first answer replies to, for people to read (sample answers).
    question: str = ""

    @property
    def answer_tokens(self) -> int:
        return sum(label != IGNORED for label in self.labels)

    @property
    def first_prompt(self) -> list[int]:
        """The tokens that ask for the first answer: what serving would send."""
        start = next((i for i, label in enumerate(self.labels) if label != IGNORED), 0)
        return self.input_ids[:start]


def tokenize_conversation(
    tokenizer: Any, messages: Sequence[Message], *, max_length: int
) -> TokenizedConversation:
    """Tokens of the whole conversation; every assistant turn is learnt.

    Each assistant turn's tokens are found as the difference between the
    prompt asking for it (exactly what serving sends) and the conversation up
    to and including it, so the template's own wrapping (end-of-turn tokens)
    is learnt too. A base model learns to end its last answer with EOS.
    """
    if not any(m["role"] == "assistant" for m in messages):
        raise DatasetError("a training conversation needs at least one assistant answer")
    chat = tokenizer.chat_template is not None
    input_ids: list[int] = []
    labels: list[int] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = prompt_ids(tokenizer, messages[:index])
        if chat:
            whole = _template_ids(tokenizer, messages[: index + 1])
        else:
            # The transcript form of this answer: "Assistant: <content>\n".
            text = transcript(messages[:index]) + f" {message['content']}\n"
            whole = list(tokenizer(text)["input_ids"])
        if prefix[: len(input_ids)] != input_ids or whole[: len(prefix)] != prefix:
            raise DatasetError(
                "the conversation does not tokenize turn by turn the way it is served; "
                "cannot mark its answers"
            )
        labels += [IGNORED] * (len(prefix) - len(input_ids)) + whole[len(prefix) :]
        input_ids = whole
    if not chat and tokenizer.eos_token_id is not None:
        input_ids = [*input_ids, tokenizer.eos_token_id]
        labels = [*labels, tokenizer.eos_token_id]
    if len(input_ids) > max_length:
        raise ConversationTooLong(
            f"a conversation has {len(input_ids)} tokens, more than the {max_length} "
            "the model takes"
        )
    first_answer = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    asked = [m["content"] for m in messages[:first_answer] if m["role"] == "user"]
    return TokenizedConversation(
        input_ids=input_ids, labels=labels, question=asked[-1] if asked else ""
    )


def _template_ids(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    encoded = tokenizer.apply_chat_template(list(messages))
    ids: list[int] = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    return list(ids)


@dataclass(frozen=True)
class TimeSplit:
    train: list[TokenizedConversation]
    validation: list[TokenizedConversation]
    test: list[TokenizedConversation]


# The fewest conversations a job learns from: each of train, validation and test needs
# some, and fewer cannot say anything about the user.
MIN_CONVERSATIONS = 10
# The test split: the fewest on which the gate can show a gain at its default confidence
# (finetune.bootstrap: 5 at 95%); fewer would always be "not enough data to judge".
MIN_TEST_CONVERSATIONS = fewest_conversations_to_judge(DEFAULT_CONFIDENCE)
MIN_VALIDATION_CONVERSATIONS = 2


def split_by_time(
    conversations: Sequence[TokenizedConversation],
    *,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    minimum: int = MIN_CONVERSATIONS,
) -> TimeSplit:
    """Oldest first in, newest last: train, then validation, then test.

    The test split has at least ``MIN_TEST_CONVERSATIONS``: a paired bootstrap over
    one or two conversations decided nothing (a candidate was promoted on 70 tokens),
    and the gate's sign-flip test needs five.
    """
    if not (0 < validation_fraction < 1 and 0 < test_fraction < 1):
        raise ValueError("the fractions must lie in (0, 1)")
    if validation_fraction + test_fraction >= 1:
        raise ValueError("validation and test together must leave something to train on")
    total = len(conversations)
    if total < minimum:
        raise DatasetError(f"{total} conversation(s) to learn from; at least {minimum} are needed")
    n_test = max(MIN_TEST_CONVERSATIONS, round(total * test_fraction))
    n_validation = max(MIN_VALIDATION_CONVERSATIONS, round(total * validation_fraction))
    n_train = total - n_test - n_validation
    items = list(conversations)
    return TimeSplit(
        train=items[:n_train],
        validation=items[n_train : n_train + n_validation],
        test=items[n_train + n_validation :],
    )


def split_for_file(
    conversations: Sequence[TokenizedConversation],
    validation: Sequence[TokenizedConversation] | None = None,
    *,
    minimum: int = MIN_CONVERSATIONS,
) -> TimeSplit:
    """A training file's split: its last lines are the newest. With a validation file,
    that file validates and the training file gives train and test (the newest 10%, at
    least ``MIN_TEST_CONVERSATIONS``); without, as ``split_by_time``."""
    if validation is None:
        return split_by_time(conversations, minimum=minimum)
    if not validation:
        raise DatasetError("the validation file has no conversation the model can take")
    total = len(conversations)
    if total < minimum:
        raise DatasetError(f"{total} conversation(s) to learn from; at least {minimum} are needed")
    n_test = max(MIN_TEST_CONVERSATIONS, round(total * 0.1))
    items = list(conversations)
    return TimeSplit(
        train=items[: total - n_test], validation=list(validation), test=items[total - n_test :]
    )
