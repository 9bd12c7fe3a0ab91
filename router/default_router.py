"""The router used until the learning one exists: forced model, else a default.

``auto`` goes to the configured default model if it can serve the request,
else to the cheapest model that can (a chat request needs a chat template),
within the caller's price limit. The default/cheapest rule itself is
``router.default_model``'s, shared with the learning router and the fine-tune route.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.decision import Candidate, RouteRequest, RoutingDecision
from router.default_model import default_model
from router.errors import NoRoute


@dataclass
class DefaultModelRouter:
    default_model: str | None = None

    def route(self, request: RouteRequest, candidates: list[Candidate]) -> RoutingDecision:
        by_id = {c.model: c for c in candidates}
        if request.requested_model is not None:
            if request.requested_model not in by_id:
                raise NoRoute(f"unknown model {request.requested_model!r}")
            return RoutingDecision(model=request.requested_model, reason="forced")
        usable = [
            c
            for c in candidates
            if (c.chat or not request.requires_chat)
            and (
                request.max_price_per_million is None
                or c.cost_per_million_tokens <= request.max_price_per_million
            )
        ]
        if not usable:
            raise NoRoute("no base model can serve this request within its limits")
        scores = {c.model: -c.cost_per_million_tokens for c in usable}
        chosen = default_model(usable, self.default_model)
        reason = "default" if chosen == self.default_model else "cheapest"
        return RoutingDecision(model=chosen, reason=reason, scores=scores)
