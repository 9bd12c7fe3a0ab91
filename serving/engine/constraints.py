"""Constrained decoding: a request's output format as a mask over each step's tokens.

A request that asks for JSON (OpenAI's ``response_format``: ``json_object``, or
``json_schema`` with a schema) gets a grammar, compiled by llguidance (a
maintained Rust grammar engine, also behind vLLM's and llama.cpp's structured
outputs) from the JSON schema. While the row runs, a matcher follows the
tokens it emitted and says which next tokens keep the output inside the
grammar; the runner samples among those only (``ModelRunner.sample``). Once
the value is complete, only an end-of-sequence token is allowed, so the row
ends as any other row that stops.

Two costs, both paid once: the tokenizer's vocabulary is indexed for the
grammar engine the first time a model meets a constrained request (about a
second for a 50k vocabulary, on the model thread), and each request's
grammar is compiled when its row starts (milliseconds for the schemas people
send). A mask costs tens of microseconds per constrained row per step.

The grammar is compact JSON (no whitespace between tokens of the value): a
small model left free to add whitespace may never stop adding it.

Invariants: a constrained row's token is always one its mask allows, and its
matcher consumes every token the row emits; whatever goes wrong with one
row's grammar (it cannot be compiled, it allows no token, it refuses a
token) fails that row alone (``ConstraintFailed``).
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

# Compact JSON: whitespace only inside strings.
_JSON_OPTIONS = {"whitespace_flexible": False}
# What json_object asks for: any JSON object.
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


class ConstraintFailed(ValueError):
    """A grammar that cannot be compiled or followed."""


def json_grammar(schema: Mapping[str, Any] | None) -> str:
    """The grammar of JSON values matching ``schema`` (None: any JSON object).

    Raises ``ConstraintFailed`` naming what is wrong when the schema cannot
    be compiled, so that a request can be refused before it runs.
    """
    from llguidance import LLMatcher

    try:
        grammar: str = LLMatcher.grammar_from_json_schema(
            json.dumps(dict(schema) if schema is not None else _ANY_OBJECT),
            defaults=_JSON_OPTIONS,  # type: ignore[arg-type]
        )
    except (ValueError, TypeError) as exc:
        raise ConstraintFailed(f"the JSON schema cannot be used: {exc}") from None
    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise ConstraintFailed(f"the JSON schema cannot be used: {error}")
    return grammar


@dataclass
class Matcher:
    """One row's place in its grammar."""

    _matcher: Any  # llguidance.LLMatcher
    vocab_size: int
    # The row's mask, 32 tokens a word, filled in place at every step.
    _bitmask: torch.Tensor | None = None

    def allowed(self) -> torch.Tensor:
        """The tokens that may come next, ``[vocab]`` booleans (at least one is true)."""
        from llguidance.torch import fill_next_token_bitmask

        if self._bitmask is None:
            self._bitmask = torch.full((1, (self.vocab_size + 31) // 32), -1, dtype=torch.int32)
        fill_next_token_bitmask(self._matcher, self._bitmask, 0)
        self._check()
        bits = torch.arange(32, dtype=torch.int32)
        words = self._bitmask[0].unsqueeze(1)
        allowed = ((words >> bits) & 1).flatten()[: self.vocab_size].bool()
        if not bool(allowed.any()):
            raise ConstraintFailed("the response format allows no next token")
        return allowed

    def accept(self, token: int) -> None:
        """Move past the row's emitted ``token``."""
        if not self._matcher.consume_token(token):
            self._check()
            raise ConstraintFailed(f"the response format does not allow token {token}")

    def _check(self) -> None:
        if self._matcher.is_error():
            raise ConstraintFailed(f"the response format failed: {self._matcher.get_error()}")


class GrammarVocabulary:
    """One model's tokenizer, indexed for the grammar engine once, on first use."""

    def __init__(
        self, tokenizer: Any, *, vocab_size: int | None, eos_token_ids: Iterable[int]
    ) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._eos = sorted(eos_token_ids)
        self._indexed: Any = None
        self._lock = threading.Lock()

    def matcher(self, grammar: str) -> Matcher:
        """A new row's matcher for ``grammar``; ``ConstraintFailed`` when it cannot be built."""
        from llguidance import LLMatcher

        if self._vocab_size is None:
            raise ConstraintFailed("this model does not say its vocabulary's size")
        matcher = LLMatcher(self._index(), grammar, log_level=0)
        if matcher.is_error():
            raise ConstraintFailed(f"the response format cannot be used: {matcher.get_error()}")
        return Matcher(matcher, self._vocab_size)

    def _index(self) -> Any:
        with self._lock:
            if self._indexed is None:
                self._indexed = self._build()
            return self._indexed

    def _build(self) -> Any:
        from llguidance import LLTokenizer

        backend = getattr(self._tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ConstraintFailed("this model's tokenizer cannot constrain its output")
        # A copy: padding and truncation are the tokenizer's settings, not the grammar's.
        backend = copy.copy(backend)
        backend.no_padding()
        backend.no_truncation()
        eos: int | list[int] = self._eos if len(self._eos) != 1 else self._eos[0]
        return LLTokenizer(backend.to_str(), n_vocab=self._vocab_size, eos_token=eos)
