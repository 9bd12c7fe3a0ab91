"""The exceptions of the router package.

RouterError
└── NoRoute           no candidate model can serve the request (API: 400)
    └── BudgetNotMet  no candidate is within a budget the request made strict (API: 400)
"""

from __future__ import annotations


class RouterError(Exception):
    """Base class of every error raised on purpose by ``router``."""


class NoRoute(RouterError):
    """No candidate base model can serve the request (unknown model, limits)."""


class BudgetNotMet(NoRoute):
    """Every candidate costs more than the request's strict price ceiling."""
