"""Turning generated token ids into text deltas, with stop sequences.

Decoding each new token alone breaks multi-byte characters and word-piece
spacing; decoding the whole output again at every token costs a step time
that grows with the output (a 2,000-token answer is decoded 2,000 times).
So a token's text is the difference between two decodes of a short window:
the tokens since the last complete text (``prefix_offset``) with and without
the new ones (from ``read_offset``). The window starts a few tokens back, so
a tokenizer that drops a word's leading space at the start of a decode drops
it from both. A window whose text ends in an incomplete character waits for
the next token. The output's text is the sum of these differences.
Text that could be the start of a stop sequence is held back until it is
known not to be one: a client never sees part of a stop sequence. ``lead``,
when the output starts with it, is not part of the answer: it is held back
until the output is known to start otherwise, and never shown; stop sequences
are looked for in the answer after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class Decoder(Protocol):
    def decode(self, token_ids: list[int], *, skip_special_tokens: bool) -> str: ...


class _RustDecoder:
    """A ``tokenizers.Tokenizer``'s own decode, without transformers' wrapper around it."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def decode(self, token_ids: list[int], *, skip_special_tokens: bool) -> str:
        text: str = self._backend.decode(token_ids, skip_special_tokens=skip_special_tokens)
        return text


def fast_decoder(tokenizer: Decoder) -> Decoder:
    """The decoder to detokenize with: a fast tokenizer's Rust decode where it is the same.

    transformers' ``decode`` converts its arguments and may clean up spaces
    before calling the Rust tokenizer's; at a batch of 256 rows that
    wrapper costs a few milliseconds a step on the output thread. Without
    the clean-up (``clean_up_tokenization_spaces`` off, as in the packaged
    models) both give the same text, so the Rust decode is called directly.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return tokenizer
    return _RustDecoder(backend)


@dataclass
class IncrementalDetokenizer:
    decoder: Decoder
    stop: tuple[str, ...] = ()
    lead: str = ""
    token_ids: list[int] = field(default_factory=list)
    decoded: str = ""  # the text of token_ids[:read_offset]
    emitted: str = ""
    stopped: bool = False
    prefix_offset: int = 0
    read_offset: int = 0

    def add(self, token_id: int) -> str:
        """Add a token; returns the text that can be shown now (maybe empty)."""
        self.token_ids.append(token_id)
        if not self._read():
            return ""
        text = self._answer(self.decoded)
        if text is None:
            return ""
        for stop in self.stop:
            at = text.find(stop, max(0, len(self.emitted) - len(stop) + 1))
            if at != -1:
                self.stopped = True
                return self._emit_up_to(text, at)
        return self._emit_up_to(text, len(text) - self._held_back(text))

    def flush(self) -> str:
        """What is left to show when generation ends without a stop sequence."""
        if self.stopped:
            return ""
        self._read(final=True)
        text = self._answer(self.decoded)
        if text is None:
            return ""
        return self._emit_up_to(text, len(text))

    def _read(self, *, final: bool = False) -> bool:
        """Move the tokens since ``read_offset`` into ``decoded``; False while they make no text.

        ``final``: the output has ended, so an incomplete character is shown as it is.
        """
        window = self.token_ids[self.prefix_offset :]
        before = self.decoder.decode(
            window[: self.read_offset - self.prefix_offset], skip_special_tokens=True
        )
        after = self.decoder.decode(window, skip_special_tokens=True)
        # A trailing replacement character: a multi-byte character is not complete yet.
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return False
        self.decoded += after[len(before) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)
        return True

    def _answer(self, decoded: str) -> str | None:
        """The output without its lead; None while it may still become the lead."""
        if decoded.startswith(self.lead):
            return decoded[len(self.lead) :]
        if self.lead.startswith(decoded):
            return None
        return decoded

    def _held_back(self, text: str) -> int:
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    longest = max(longest, size)
                    break
        return longest

    def _emit_up_to(self, text: str, end: int) -> str:
        if end <= len(self.emitted):
            return ""
        delta = text[len(self.emitted) : end]
        self.emitted = text[:end]
        return delta
