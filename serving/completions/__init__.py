"""OpenAI-compatible completions (``/v1/chat/completions``, ``/v1/completions``).

One request's path is owned by ``CompletionService`` (``service``); its steps live apart,
each testable alone, as the best serving engines split theirs:

- ``preparation``: admission and preparation (what Tailor serves, routing with the
  caller's preferences, tokenizing, the context limit, sampling, the caller's experts);
- ``service``: submitting to the backend, collecting or streaming, logging, the router's
  load ledger;
- ``wire``: the OpenAI bodies and stream chunks;
- ``streaming``: a stream whose end runs once, even if it never started.
"""

from serving.completions.service import CompletionService

__all__ = ["CompletionService"]
