"""Per-request sampling: greedy, temperature, nucleus (top-p), seeded.

Parameters are validated when ``SamplingParams`` is built, so that what the
engine thread meets is always something it can sample with: a seed out of
``torch.Generator``'s range would otherwise fail in the middle of a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
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
# How many of a row's most likely tokens the nucleus is looked for in first (_nucleus).
NUCLEUS_CANDIDATES = 64


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
    # The grammar the output must follow (serving.engine.constraints); None: free text.
    grammar: str | None = None

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
        if self.grammar is not None and (not isinstance(self.grammar, str) or not self.grammar):
            raise ValueError("grammar must be a non-empty string")

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


def draw(generator: torch.Generator) -> float:
    """The row's uniform number in [0, 1) for this step, from its own generator."""
    return float(torch.rand((), generator=generator))


def sample_rows(
    logits: torch.Tensor, params: Sequence[SamplingParams], uniforms: Sequence[float]
) -> list[int]:
    """Each row's next token from its last logits ``[rows, vocab]``, for rows that sample.

    One pass for the whole batch on the logits' device: temperature, the
    nucleus (top-p), then an inverse-CDF draw of the row's ``uniforms[i]``
    over the vocabulary in token-id order. Drawing in id order, not in sorted
    order, keeps a seeded request's tokens independent of its batch:
    near-equal probabilities swap places in a sort under a few ulps of noise
    (a batch computes logits a little differently). Each row's randomness is
    its one uniform, drawn by the caller from the row's generator, so no row
    consumes another's random numbers.
    """
    if not len(params) == len(uniforms) == logits.shape[0]:
        raise ValueError("one SamplingParams and one uniform per row of logits")
    device = logits.device
    scores = logits.float()
    temperatures = torch.tensor([p.temperature for p in params], device=device)
    # Shifting each row's maximum to 0 first keeps a tiny temperature from
    # turning the logits into inf - inf (NaN): the best token's weight stays exp(0).
    scores = (scores - scores.max(dim=-1, keepdim=True).values) / temperatures.unsqueeze(1)
    probabilities = torch.softmax(scores, dim=-1)
    top_p = [p.top_p for p in params]
    if any(p < 1.0 for p in top_p):
        probabilities = _nucleus(probabilities, top_p)
    cdf = probabilities.cumsum(dim=-1)
    total = cdf[:, -1:]
    targets = torch.tensor(uniforms, device=device, dtype=cdf.dtype).unsqueeze(1) * total
    # Below the total mass even where u * total rounds up to it (u near 1).
    targets = torch.minimum(targets, torch.nextafter(total, torch.zeros_like(total)))
    # The first token whose cumulative mass exceeds the target: never one of
    # zero probability, whose cumulative mass equals the token's before it.
    tokens = torch.searchsorted(cdf, targets, right=True).squeeze(1)
    return [int(t) for t in tokens.tolist()]


def _nucleus(probabilities: torch.Tensor, top_p: Sequence[float]) -> torch.Tensor:
    """``probabilities`` with every token outside each row's nucleus set to 0.

    The nucleus is the smallest prefix of the tokens by falling probability
    whose mass reaches top_p (always the first token). It is looked for among
    the ``NUCLEUS_CANDIDATES`` most likely tokens first, which is where it
    lies at the temperatures people use; only a row whose candidates hold
    less than its top_p sorts its whole vocabulary.
    """
    vocab = probabilities.shape[-1]
    limits = torch.tensor(top_p, device=probabilities.device)
    # A row without a nucleus (top_p 1) keeps every token, whatever the rounding.
    unlimited = limits >= 1.0
    limits = torch.where(unlimited, torch.full_like(limits, 2.0), limits).unsqueeze(1)
    values, ids = probabilities.topk(min(NUCLEUS_CANDIDATES, vocab), dim=-1)
    inside = values.cumsum(dim=-1) - values < limits
    keep = torch.zeros_like(probabilities, dtype=torch.bool).scatter_(1, ids, inside)
    beyond = (inside[:, -1] & ~unlimited).nonzero().flatten()
    if beyond.numel():
        values, ids = probabilities.index_select(0, beyond).sort(dim=-1, descending=True)
        inside = values.cumsum(dim=-1) - values < limits.index_select(0, beyond)
        keep[beyond] = torch.zeros_like(inside).scatter_(1, ids, inside)
    keep |= unlimited.unsqueeze(1)
    return probabilities.masked_fill(~keep, 0.0)
