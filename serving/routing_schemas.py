"""Bodies of the routing endpoints: a user's preferences and the admin views
(the router's state, a routing reset, calibration)."""

from __future__ import annotations

from datetime import datetime

from pydantic import MISSING, BaseModel, ConfigDict, Field

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


# The routing decision ------------------------------------------------------------
#
# Built from dicts the routers write (router.decision.RoutingDecision.public, the learning
# router's state): ``extra="forbid"``, so that a field a router adds and this contract does
# not name fails loudly (the tests) instead of vanishing from the answer. A field that is
# ``X | MISSING`` is absent, not null, where the router does not give it (the default router
# gives none of the learning router's fields).


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RouteCandidatePublic(_Strict):
    """One base model as the learning router weighed it for this request."""

    rating: float
    quality: float
    quality_std: float
    shared_quality: float
    neighbour_shift: float
    user_shift: float
    expert_term: float
    utility: float
    predicted_tokens: int
    expected_cost: float
    in_flight: int
    predicted_latency_s: float
    within_budget: bool


class RouteExpertsPublic(_Strict):
    """The caller's experts on one base model, as the router counted them."""

    specialist_version_id: str | None
    generalists: int
    gain: float | None
    significant: bool


class RouteNeighboursPublic(_Strict):
    count: int
    similarities: list[float]


class RoutePublic(_Strict):
    """``tailor.route`` of a completion: the model chosen, why, and (from the learning
    router) what it weighed."""

    model: str
    scores: dict[str, float]
    reason: str
    candidates: dict[str, RouteCandidatePublic] | MISSING = MISSING
    explored: bool | MISSING = MISSING
    incumbent: str | MISSING | None = MISSING
    experts: dict[str, RouteExpertsPublic] | MISSING = MISSING
    neighbours: RouteNeighboursPublic | MISSING = MISSING
    user_feedback: int | MISSING = MISSING
    cost_weight: float | MISSING = MISSING
    latency_slo_s: float | MISSING | None = MISSING
    # Only when the caller set a price ceiling.
    max_price: float | MISSING = MISSING
    decision_ms: float | MISSING = MISSING


class NeighbourResponsePublic(_Strict):
    response_id: str
    similarity: float


class RecentDecisionPublic(RoutePublic):
    """A decision as the admin view keeps it: whose, and the neighbours' responses."""

    user_id: str
    neighbour_responses: list[NeighbourResponsePublic] | MISSING = MISSING


# The router's state (GET /admin/router) ----------------------------------------------


class RouterConfigPublic(_Strict):
    """The learning router's settings (``TAILOR_ROUTER_*``)."""

    global_weight: float
    neighbours: int
    k: float
    cost_weight: float
    latency_slo_s: float | None
    switch_confidence: float
    explore_rate: float
    explore_max_regret: float
    expert_bonus: float
    user_full_votes: int
    user_max_share: float


class NoRouterConfigPublic(_Strict):
    """``{}``: no learning router, so no settings of one."""


class ModelMixPublic(_Strict):
    responses: int
    prompt_tokens: int
    completion_tokens: int
    cost: float


class RouterMixPublic(_Strict):
    """What was served over the window, per base model (from stored responses)."""

    window_hours: float
    models: dict[str, ModelMixPublic]


class GlobalRatingPublic(_Strict):
    rating: float
    games: int
    evidence: float
    intercept_quality: float


class RouterUserPublic(_Strict):
    user_id: str
    feedback: int
    shared_weight: float
    trust: float
    own_evidence_rows: int


class ModelLoadPublic(_Strict):
    """router.load.ModelLoad: one model's load as the router sees it."""

    in_flight: int
    queued_tokens: int
    capacity: int
    first_token_seconds: float
    seconds_per_token: float
    mean_request_seconds: float


class DecisionLatencyPublic(_Strict):
    count: int
    p50: float | None
    p99: float | None


class RouterStatePublic(_Strict):
    """``GET /admin/router``: ratings, mix, cost, decision latency, recent decisions.

    Without the learning router only ``router``, ``config`` (``{}``) and ``mix``."""

    router: str
    config: RouterConfigPublic | NoRouterConfigPublic
    mix: RouterMixPublic
    last_feedback_id: int | MISSING = MISSING
    global_: dict[str, GlobalRatingPublic] | MISSING = Field(default=MISSING, alias="global")
    local_queries: int | MISSING = MISSING
    users: list[RouterUserPublic] | MISSING = MISSING
    output_lengths: dict[str, int] | MISSING = MISSING
    load: dict[str, ModelLoadPublic] | MISSING = MISSING
    decision_ms: DecisionLatencyPublic | MISSING = MISSING
    # Newest first.
    recent: list[RecentDecisionPublic] | MISSING = MISSING


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
