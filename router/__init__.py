"""Picks the base model of each request: a calibrated estimate of each model's answer
quality for this user and query (with its uncertainty), the user's experts, cost and load,
with Eagle's ELO ratings shown beside it (issues #5 and #16).

The public surface: the ``Router`` interface with its request, candidates and
decision; ``EagleRouter`` (the learning router) and ``DefaultModelRouter`` (a
fixed choice); the errors.
"""

from router.config import RouterConfig
from router.decision import Candidate, ExpertEvidence, Router, RouteRequest, RoutingDecision
from router.default_router import DefaultModelRouter
from router.eagle_router import EagleRouter
from router.errors import BudgetNotMet, NoRoute, RouterError
from router.feedback_outcomes import FeedbackEvent

__all__ = [
    "BudgetNotMet",
    "Candidate",
    "DefaultModelRouter",
    "EagleRouter",
    "ExpertEvidence",
    "FeedbackEvent",
    "NoRoute",
    "RouteRequest",
    "Router",
    "RouterConfig",
    "RouterError",
    "RoutingDecision",
]
