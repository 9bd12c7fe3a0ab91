"""Turning generated token ids into text deltas, with stop sequences.

Decoding each new token alone breaks multi-byte characters and word-piece
spacing, so the whole output is decoded and the new part is the difference.
Text that could be the start of a stop sequence is held back until it is
known not to be one: a client never sees part of a stop sequence. ``lead``,
when the output starts with it, is not part of the answer: it is held back
until the output is known to start otherwise, and never shown; stop sequences
are looked for in the answer after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class Decoder(Protocol):
    def decode(self, token_ids: list[int], *, skip_special_tokens: bool) -> str: ...


@dataclass
class IncrementalDetokenizer:
    decoder: Decoder
    stop: tuple[str, ...] = ()
    lead: str = ""
    token_ids: list[int] = field(default_factory=list)
    emitted: str = ""
    stopped: bool = False

    def add(self, token_id: int) -> str:
        """Add a token; returns the text that can be shown now (maybe empty)."""
        self.token_ids.append(token_id)
        decoded = self.decoder.decode(self.token_ids, skip_special_tokens=True)
        # A trailing replacement character means a multi-byte character is
        # not complete yet.
        if decoded.endswith("\ufffd"):
            return ""
        text = self._answer(decoded)
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
        text = self._answer(self.decoder.decode(self.token_ids, skip_special_tokens=True))
        if text is None:
            return ""
        return self._emit_up_to(text, len(text))

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
