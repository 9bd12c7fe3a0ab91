"""Picks the base model of each request (Eagle-style learning router: issue #5).

Today: ``DefaultModelRouter`` behind the ``Router`` interface that the
learning router will implement.
"""

from router.decision import Candidate, Router, RouteRequest, RoutingDecision
from router.default_router import DefaultModelRouter
from router.errors import NoRoute, RouterError

__all__ = [
    "Candidate",
    "DefaultModelRouter",
    "NoRoute",
    "RouteRequest",
    "Router",
    "RouterError",
    "RoutingDecision",
]
