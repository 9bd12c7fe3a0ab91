"""Per-request sampling: greedy, temperature, nucleus (top-p), seeded.

Parameters are validated when ``SamplingParams`` is built, so that what the
engine thread meets is always something it can sample with: a seed out of
``torch.Generator``'s range would otherwise fail in the middle of a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_STOP_SEQUENCES = 4
# The signed 64-bit range (what OpenAI's integer ``seed`` is). torch's
# manual_seed takes -2**63 .. 2**64-1 (a negative seed as its two's
# complement) and raises beyond. Note that the CPU generator (mt19937) is
# seeded from the low 32 bits only: seeds equal modulo 2**32 sample alike.
MIN_SEED = -(2**63)
MAX_SEED = 2**63 - 1
# OpenAI's bound on top_logprobs.
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens; validated on construction."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Return each generated token's log-probability and this many of the most
    # likely alternatives (0-20); None: none.
    logprobs: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError("temperature must be between 0 and 2")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if len(self.stop) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(not s for s in self.stop):
            raise ValueError("stop sequences must not be empty")
        if self.seed is not None and (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int)
            or not MIN_SEED <= self.seed <= MAX_SEED
        ):
            raise ValueError(f"seed must be an integer from {MIN_SEED} to {MAX_SEED}")
        if self.logprobs is not None and (
            isinstance(self.logprobs, bool)
            or not isinstance(self.logprobs, int)
            or not 0 <= self.logprobs <= MAX_TOP_LOGPROBS
        ):
            raise ValueError(f"logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def new_generator(params: SamplingParams) -> torch.Generator | None:
    """A CPU generator for a seeded request, so its output does not depend on its batch."""
    if params.greedy:
        return None
    if params.seed is not None and not MIN_SEED <= params.seed <= MAX_SEED:
        # Only when SamplingParams' validation was bypassed; torch itself
        # would take up to 2**64-1, but the range is the same everywhere.
        raise ValueError(f"seed must be an integer from {MIN_SEED} to {MAX_SEED}")
    generator = torch.Generator()
    generator.manual_seed(params.seed if params.seed is not None else torch.seed())
    return generator


def sample_token(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> int:
    """The next token of one row from its last-position logits ``[vocab]``."""
    if params.greedy:
        return int(torch.argmax(logits))
    # Shifting the maximum to 0 first keeps a tiny temperature from turning
    # the logits into inf - inf (NaN): the best token's weight stays exp(0).
    logits = logits.float().cpu()
    scaled = (logits - logits.max()) / params.temperature
    probabilities = torch.softmax(scaled, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, sorted_ids = torch.sort(probabilities, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always the first token).
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= params.top_p
        probabilities = probabilities.clone()
        probabilities[sorted_ids[outside]] = 0.0
    # Draw over the vocabulary in token-id order, not in sorted order: near-equal
    # probabilities swap places in a sort under tiny numeric noise (a batch
    # computes logits a few ulps differently), which would change a seeded
    # request's tokens depending on who else is in its batch.
    return int(torch.multinomial(probabilities, 1, generator=generator))
