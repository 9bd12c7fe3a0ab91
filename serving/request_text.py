"""What text Tailor accepts from a request, on every route and every database.

One definition: valid Unicode (no lone surrogate, which JSON's ``\\ud800``
escapes can smuggle in) and no NUL (U+0000). PostgreSQL refuses NUL in text
and JSONB, and a lone surrogate cannot be encoded to UTF-8 at all, so without
this the same request would be stored on SQLite and fail with a 500 on
PostgreSQL, or fail only once a model had already answered it.

``RequestBody`` applies the rule to the whole raw input of every request
schema before any field is validated, so a new field cannot forget it; path,
query and header values are checked by ``serving.request_limits``.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

_UNACCEPTABLE = re.compile("[\x00\ud800-\udfff]")

Location = tuple[str | int, ...]


def text_problem(text: str) -> str | None:
    """Why ``text`` is refused, or None if it is acceptable."""
    found = _UNACCEPTABLE.search(text)
    if found is None:
        return None
    char = found.group()
    if char == "\x00":
        return "contains a NUL character (U+0000), which is not accepted"
    return f"contains a lone surrogate (U+{ord(char):04X}), which is not valid Unicode"


def printable(text: str) -> str:
    """``text`` with unacceptable characters escaped: safe to put into an error message."""
    return _UNACCEPTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def first_text_problem(value: Any) -> tuple[Location, str] | None:
    """The location and problem of the first unacceptable string in a JSON-like value.

    Walks dicts (keys and values), lists and tuples without recursion, so that
    deeply nested input cannot exhaust the stack.
    """
    pending: list[tuple[Location, Any]] = [((), value)]
    while pending:
        where, item = pending.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem is not None:
                return where, problem
        elif isinstance(item, dict):
            children: list[tuple[Location, Any]] = []
            for key, child in item.items():
                if isinstance(key, str) and (problem := text_problem(key)) is not None:
                    return (*where, printable(key)), f"the key {problem}"
                children.append(((*where, key if isinstance(key, str | int) else str(key)), child))
            pending.extend(reversed(children))
        elif isinstance(item, list | tuple):
            pending.extend(((*where, i), child) for i, child in reversed(list(enumerate(item))))
    return None


class RequestBody(BaseModel):
    """The base of every request schema: refuses unacceptable text anywhere in the input."""

    @model_validator(mode="before")
    @classmethod
    def _acceptable_text(cls, data: Any) -> Any:
        found = first_text_problem(data)
        if found is None:
            return data
        where, problem = found
        # A ValidationError raised here keeps its location, so the 422 names
        # the field (``messages.0.content``), not just "body".
        raise ValidationError.from_exception_data(
            cls.__name__,
            [
                InitErrorDetails(
                    type=PydanticCustomError("invalid_text", problem),
                    loc=where,
                    input=None,
                )
            ],
        )
