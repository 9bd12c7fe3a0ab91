"""Progress of a model store preparation, as steps a display can count.

Preparing the store takes minutes on a fresh machine; ``tailor models prepare``
shows each item with a bar, so each report says how far its item has got
(``done`` of ``total`` steps), not only what it is doing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class PreparationStep:
    """``item`` (a model id, or the query encoder) has finished ``done`` of ``total`` steps."""

    item: str
    done: int
    total: int
    message: str

    def __post_init__(self) -> None:
        if not 0 <= self.done <= self.total or self.total < 1:
            raise ValueError(f"step {self.done} of {self.total}")

    @property
    def finished(self) -> bool:
        return self.done == self.total

    def __str__(self) -> str:
        return f"{self.item}: {self.message}"


Progress = Callable[[PreparationStep], None]
