"""What the router decides for a request, and the interface every router fills."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class ExpertEvidence:
    """What the user's experts on one base model are worth, as the evaluation gate measured.

    ``gain``: the specialist's NLL gain over the base model, relative to the base's NLL
    (0.08: 8% fewer nats per token on the user's held-out examples); None when unmeasured.
    ``significant``: the gain's interval lay above zero.
    """

    model: str
    specialist_version_id: str | None
    generalists: int = 0
    gain: float | None = None
    significant: bool = False


@dataclass(frozen=True)
class RouteRequest:
    """What the router may look at: the text, its size, and the caller's limits.

    ``max_price_per_million``, ``cost_weight`` and ``latency_slo_seconds`` are
    the caller's (request first, then the user's preferences); None means the
    service's default. With ``strict_budget`` a price ceiling no candidate
    meets is an error instead of a fall back to the cheapest model.
    """

    user_id: str
    prompt_text: str
    prompt_tokens: int
    max_tokens: int
    # A base model id, or None for "auto".
    requested_model: str | None = None
    max_price_per_million: float | None = None
    strict_budget: bool = False
    cost_weight: float | None = None
    latency_slo_seconds: float | None = None
    requires_chat: bool = False
    # False: decide on the estimate alone (no exploration), e.g. with a strict budget.
    explore: bool = True
    # Per candidate base model, the user's experts on it (none listed: no experts).
    experts: tuple[ExpertEvidence, ...] = ()


@dataclass(frozen=True)
class RoutingDecision:
    model: str
    # "forced", "default", "expert", "score", "cost", "budget", "load", "explore"
    reason: str
    scores: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    # Kept with the response and shown to admins, never to users: it names
    # other users' responses (the neighbours the local ratings came from).
    private_details: dict[str, Any] = field(default_factory=dict)
    query_vector: npt.NDArray[np.float32] | None = field(default=None, repr=False, compare=False)
    predicted_tokens: int | None = None

    def public(self) -> dict[str, Any]:
        """The ``tailor.route`` object of a response."""
        return {"model": self.model, "scores": self.scores, "reason": self.reason, **self.details}

    def logged(self) -> dict[str, Any]:
        """What the response log and the admin view keep of the decision."""
        return {**self.public(), **self.private_details}


@dataclass(frozen=True)
class Candidate:
    model: str
    cost_per_million_tokens: float
    chat: bool


class Router(Protocol):
    def route(self, request: RouteRequest, candidates: list[Candidate]) -> RoutingDecision: ...
