"""Which request fields a completion honours, which change nothing here, and which are refused.

OpenAI clients may send any field of OpenAI's API. A field Tailor quietly
dropped would give an answer that is not what the caller asked for (tools
never called, penalties not applied, free text where JSON was asked for), so
every field of a chat or text completion is one of:

- implemented: a declared field of ``serving.openai_schemas`` (or Tailor's own),
  ``logprobs`` and ``top_logprobs`` included;
- without effect here, accepted (``WITHOUT_EFFECT``): bookkeeping that does not
  change the answer (``user``, ``metadata``, ``store``, ...), and
  ``stream_options``, whose usage the stream's last chunk always carries;
- not supported (``NOT_SUPPORTED``): refused with 400 naming the field, unless
  its value asks for nothing (``tools: []``, ``tool_choice: "none"``,
  ``presence_penalty: 0``...);
- unknown: any other name, refused with 400 (a misspelt ``temprature`` would
  otherwise be a silent default).

This module is the one place that decides; ``preparation.prepare`` asks it
before anything else is done for the request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

WITHOUT_EFFECT = frozenset(
    {
        "user",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
        "stream_options",
        # Only means something with tools, which are refused.
        "parallel_tool_calls",
    }
)


def _absent(value: Any) -> bool:
    return value is None or value is False or value == 0 or value == [] or value == {}


def _text_only(value: Any) -> bool:
    return value is None or value == ["text"]


def _no_tool(value: Any) -> bool:
    return value is None or value == "none"


def _one(value: Any) -> bool:
    return value is None or value == 1


# Field -> (when its value asks for nothing, why it is refused otherwise).
NOT_SUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "tools": (_absent, "Tailor's models do not call tools"),
    "tool_choice": (_no_tool, "Tailor's models do not call tools"),
    "functions": (_absent, "Tailor's models do not call functions"),
    "function_call": (_no_tool, "Tailor's models do not call functions"),
    "logit_bias": (_absent, "logit bias is not applied"),
    "presence_penalty": (_absent, "penalties are not applied"),
    "frequency_penalty": (_absent, "penalties are not applied"),
    "modalities": (_text_only, "only text is generated"),
    "audio": (_absent, "only text is generated"),
    "prediction": (_absent, "predicted outputs are not used"),
    "reasoning_effort": (_absent, "the models served do not reason in steps"),
    "verbosity": (_absent, "verbosity is not controlled"),
    "web_search_options": (_absent, "Tailor does not search the web"),
    # The text completion's own.
    "best_of": (_one, "one candidate is generated per request"),
    "echo": (_absent, "the prompt is not echoed"),
    "suffix": (_absent, "text is generated after the prompt only"),
}


class UnsupportedParameter(ValueError):
    """A request field Tailor cannot honour; ``name`` is the field."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def check_parameters(extra: Mapping[str, Any]) -> None:
    """Refuse the first field of ``extra`` (the body's undeclared fields) Tailor cannot honour."""
    for name in sorted(extra):
        if name in WITHOUT_EFFECT:
            continue
        if name in NOT_SUPPORTED:
            asks_nothing, why = NOT_SUPPORTED[name]
            if asks_nothing(extra[name]):
                continue
            raise UnsupportedParameter(name, f"{name!r} is not supported: {why}; leave it out")
        raise UnsupportedParameter(
            name, f"unknown parameter {name!r}: Tailor does not know this field (see docs/api.md)"
        )
