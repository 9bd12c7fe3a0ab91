"""Picks the base model of each request: Eagle's ratings (global and local ELO over
query embeddings), each user's own ratings, cost and load (issue #5).

The public surface: the ``Router`` interface with its request, candidates and
decision; ``EagleRouter`` (the learning router) and ``DefaultModelRouter`` (a
fixed choice); the errors.
"""

from router.config import RouterConfig
from router.decision import Candidate, Router, RouteRequest, RoutingDecision
from router.default_router import DefaultModelRouter
from router.eagle_router import EagleRouter
from router.errors import BudgetNotMet, NoRoute, RouterError
from router.feedback_outcomes import FeedbackEvent

__all__ = [
    "BudgetNotMet",
    "Candidate",
    "DefaultModelRouter",
    "EagleRouter",
    "FeedbackEvent",
    "NoRoute",
    "RouteRequest",
    "Router",
    "RouterConfig",
    "RouterError",
    "RoutingDecision",
]
