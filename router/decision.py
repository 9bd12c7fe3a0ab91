"""What the router decides for a request, and the interface every router fills."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class RouteRequest:
    """What the router may look at: the text, its size, and the caller's limits."""

    user_id: str
    prompt_text: str
    prompt_tokens: int
    max_tokens: int
    # A base model id, or None for "auto".
    requested_model: str | None = None
    max_price_per_million: float | None = None
    requires_chat: bool = False


@dataclass(frozen=True)
class RoutingDecision:
    model: str
    reason: str  # "forced", "default", "budget", "load", "score", ...
    scores: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """The ``tailor.route`` object of a response."""
        return {"model": self.model, "scores": self.scores, "reason": self.reason, **self.details}


@dataclass(frozen=True)
class Candidate:
    model: str
    cost_per_million_tokens: float
    chat: bool


class Router(Protocol):
    def route(self, request: RouteRequest, candidates: list[Candidate]) -> RoutingDecision: ...
