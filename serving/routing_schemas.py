"""Bodies of the routing endpoints: a user's preferences and the admin view."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from serving.request_text import RequestBody
from storage.tables import User


class RoutingPreferencesPublic(BaseModel):
    """A user's routing preferences; null means the service's default."""

    cost_weight: float | None
    max_price: float | None
    latency_slo_seconds: float | None

    @classmethod
    def of(cls, user: User) -> RoutingPreferencesPublic:
        return cls(
            cost_weight=user.route_cost_weight,
            max_price=user.route_max_price,
            latency_slo_seconds=user.route_latency_slo_seconds,
        )


# Upper bounds of the routing limits a request or a user may set: far beyond
# any sensible value, but finite, so that scores stay finite numbers.
MAX_COST_WEIGHT = 1_000.0
MAX_PRICE_PER_MILLION = 1_000_000.0
MAX_LATENCY_SLO_SECONDS = 86_400.0


class RoutingPreferencesUpdate(RequestBody):
    """PATCH: the fields sent are set (null clears one), the others stay.

    Finite numbers only: an infinite price would be stored, then shown as null.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    cost_weight: float | None = Field(default=None, ge=0.0, le=MAX_COST_WEIGHT)
    max_price: float | None = Field(default=None, ge=0.0, le=MAX_PRICE_PER_MILLION)
    latency_slo_seconds: float | None = Field(default=None, gt=0.0, le=MAX_LATENCY_SLO_SECONDS)

    def changes(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class RouterStatePublic(BaseModel):
    """``GET /admin/router``: ratings, mix, cost, decision latency, recent decisions."""

    model_config = ConfigDict(extra="allow")

    router: str
    config: dict[str, Any] = Field(default_factory=dict)
    mix: dict[str, Any] = Field(default_factory=dict)
