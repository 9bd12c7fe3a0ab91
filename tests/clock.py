"""A clock that tests move by hand, for code that takes ``clock: Callable[[], float]``.

Expiry and rate limits are then checked at exact instants instead of by
sleeping, which is slow and flaky on a loaded machine.
"""

from __future__ import annotations


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
