"""What a request that leaves out its sampling fields is answered with, per model.

Resolved once per served model when it is loaded, field by field, from (first
found wins):

1. the model's entry in ``TAILOR_GENERATION_DEFAULTS`` (validated with the settings);
2. the model's own ``generation_config.json`` in the model store: its
   ``temperature`` and ``top_p`` (but ``do_sample: false``, the author asking for
   greedy decoding, is temperature 0), ``max_new_tokens`` as the answer's
   length, ``stop_strings`` as its stop sequences;
3. ``BUILT_IN``.

The built-in sampling is near-greedy (temperature 0.2, top_p 0.9), the rule for
a model whose config does not say how to sample (transformers would decode it
greedily): the small models Tailor serves answer simple questions with
gibberish at temperature 1.0 (SmolLM2-135M-Instruct's card recommends 0.2 and
0.9), while pure greedy decoding repeats itself more. A value in a model's
config that a request could not ask for (temperature 3) is logged and skipped.

A request's own ``temperature``, ``top_p``, ``max_tokens`` and ``stop`` win over
all of these (OpenAI semantics: what the client omits takes the model's default).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.engine.sampling import MAX_STOP_SEQUENCES
from serving.settings import GenerationOverride

logger = logging.getLogger(__name__)

GENERATION_CONFIG_FILE = "generation_config.json"


@dataclass(frozen=True)
class GenerationDefaults:
    """A model's sampling for the fields a request leaves out."""

    temperature: float
    top_p: float
    max_tokens: int
    stop: tuple[str, ...]


BUILT_IN = GenerationDefaults(temperature=0.2, top_p=0.9, max_tokens=256, stop=())


def resolve(
    model_id: str, model_dir: Path, overrides: Mapping[str, GenerationOverride]
) -> GenerationDefaults:
    """``model_id``'s defaults: its override, then its generation config, then ``BUILT_IN``."""
    found: dict[str, Any] = {}
    found.update(from_generation_config(model_dir / GENERATION_CONFIG_FILE))
    override = overrides.get(model_id)
    if override is not None:
        found.update(override.model_dump(exclude_none=True))
    if "stop" in found:
        found["stop"] = tuple(found["stop"])
    defaults = GenerationDefaults(
        temperature=found.get("temperature", BUILT_IN.temperature),
        top_p=found.get("top_p", BUILT_IN.top_p),
        max_tokens=found.get("max_tokens", BUILT_IN.max_tokens),
        stop=found.get("stop", BUILT_IN.stop),
    )
    logger.info(
        "%s: generation defaults temperature %g, top_p %g, max_tokens %d, stop %r",
        model_id,
        defaults.temperature,
        defaults.top_p,
        defaults.max_tokens,
        list(defaults.stop),
    )
    return defaults


def from_generation_config(path: Path) -> dict[str, Any]:
    """The fields of ``GenerationDefaults`` that a generation config sets (none if absent)."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        logger.warning("%s is unreadable (%s); using the built-in generation defaults", path, exc)
        return {}
    if not isinstance(config, dict):
        logger.warning("%s is not a JSON object; using the built-in generation defaults", path)
        return {}
    found: dict[str, Any] = {}
    if config.get("do_sample") is False:
        found["temperature"] = 0.0
    else:
        _take(found, "temperature", config, "temperature", _temperature, path)
        _take(found, "top_p", config, "top_p", _top_p, path)
    _take(found, "max_tokens", config, "max_new_tokens", _max_tokens, path)
    _take(found, "stop", config, "stop_strings", _stop, path)
    return found


def _take(
    found: dict[str, Any],
    field: str,
    config: Mapping[str, Any],
    key: str,
    check: Callable[[object], object | None],
    path: Path,
) -> None:
    if config.get(key) is None:
        return
    value = check(config[key])
    if value is None:
        logger.warning(
            "%s: ignoring %s = %r, which a request could not ask for", path, key, config[key]
        )
        return
    found[field] = value


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _temperature(value: object) -> float | None:
    number = _number(value)
    return number if number is not None and 0.0 <= number <= 2.0 else None


def _top_p(value: object) -> float | None:
    number = _number(value)
    return number if number is not None and 0.0 < number <= 1.0 else None


def _max_tokens(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


def _stop(value: object) -> tuple[str, ...] | None:
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOP_SEQUENCES
        or not all(isinstance(stop, str) and stop for stop in stops)
    ):
        return None
    return tuple(stops)
