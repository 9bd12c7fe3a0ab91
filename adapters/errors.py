"""The exceptions of the adapters package.

AdapterError
├── InvalidAdapter        an adapter file or directory fails validation (API: 422)
├── AdapterNotFound       no such expert or version visible to the caller (API: 404)
└── InvalidTransition     a lifecycle change not allowed from the current state (API: 409)
"""

from __future__ import annotations


class AdapterError(Exception):
    """Base class of every error raised on purpose by ``adapters``."""


class InvalidAdapter(AdapterError):
    """An adapter fails validation; ``reason`` says what is wrong, for the user."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class AdapterNotFound(AdapterError):
    """The expert or version does not exist, or belongs to another user."""


class InvalidTransition(AdapterError):
    """E.g. promoting a version that is not a candidate, or a lost promotion race."""


class SlotsExhausted(AdapterError):
    """Every adapter slot of a replica is in use by running requests (API: 503)."""
