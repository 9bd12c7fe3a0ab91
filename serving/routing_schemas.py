"""Bodies of the routing endpoints: a user's preferences and the admin views
(the router's state, a routing reset, calibration)."""

from __future__ import annotations

from datetime import datetime
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


class RoutingResetPublic(BaseModel):
    """``POST /admin/users/{id}/routing/reset``: the user's feedback the router now ignores."""

    user_id: str
    # The user's feedback with id <= this no longer moves routing.
    ignored_feedback_up_to: int
    reset_at: datetime

    @classmethod
    def of(cls, user: User) -> RoutingResetPublic:
        assert user.route_reset_feedback_id is not None and user.route_reset_at is not None
        return cls(
            user_id=user.id,
            ignored_feedback_up_to=user.route_reset_feedback_id,
            reset_at=user.route_reset_at,
        )


class CalibrationBinPublic(BaseModel):
    """One bin of a reliability diagram; the means are null when it is empty."""

    lower: float
    upper: float
    count: int
    mean_predicted: float | None
    observed_rate: float | None


class OfflineCalibrationPublic(BaseModel):
    """The offline benchmark's reliability figures, as it wrote them (extra fields kept)."""

    model_config = ConfigDict(extra="allow")

    source: str
    count: int
    brier: float | None
    ece: float | None
    bins: list[CalibrationBinPublic]


class CalibrationPublic(BaseModel):
    """``GET /admin/router/calibration``: the served model's predicted quality vs feedback."""

    window_hours: float
    count: int
    brier: float | None
    ece: float | None
    bins: list[CalibrationBinPublic]
    offline: OfflineCalibrationPublic | None = None
