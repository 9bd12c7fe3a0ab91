"""What the engine raises, and what a failed request's ``Failed`` event carries.

The API maps these to HTTP answers (``serving/completions/service.py``): every
part of the engine (scheduler, model runner, output processor) raises or
publishes the same types, so they live below all of them. ``serving.engine.engine``
re-exports them: callers import them from there.
"""

from __future__ import annotations


class EngineOverloaded(Exception):
    """The admission queue is full; try again later (API: 503)."""


class EngineStopped(Exception):
    """The engine is not running."""


class RequestFailed(Exception):
    """One request failed in the engine; the others go on.

    The message says what failed for this request and is safe to show to its
    caller (the original error is in the server log, and in ``__cause__``).
    """


class InvalidSampling(RequestFailed):
    """The request's sampling parameters could not be used (its caller is to blame)."""


class NonFiniteLogits(RequestFailed):
    """The model produced NaN or infinite logits for this request."""
