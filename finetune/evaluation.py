"""The evaluation gate: is a candidate better than what the user gets now?

Every variant is scored through serving's own ``MultiLoraModel`` on the base
model as serving runs it, so what is measured is what would be served, gate
and top-k included. Scores are summed NLL per held-out conversation, over the
answer tokens only (the same tokens training learnt).

A candidate is promoted only if, on the user's test split (newest data),
- it beats the base model, and what the user is served now (the generalists
  and the active specialist), on the per-token NLL: a paired bootstrap's 95%
  lower bound above zero, and a paired sign-flip test at 5%
  (``finetune.bootstrap``). Fewer held-out conversations than such a test
  needs (5 at 95%) give the verdict "not enough data to judge": held back,
  and the user or an admin decides from the figures and sample answers;
- it still answers the fixed factual probes (``finetune.factual_probes``): of
  those the base model answers, it may lose at most ``max_probe_loss`` of them
  (it must not forget what the model knew);
- its NLL on a fixed generic text set rises by at most ``max_generic_rise``
  over the base model's (10% by default, ``TAILOR_FINETUNE_MAX_GENERIC_RISE``,
  and an admin may set it per user: a real style raises it by several percent,
  so this is a trade-off between how far an adapter may move the model's
  ordinary writing and what it may learn; the probes guard knowledge);
- every score is finite. A candidate whose logits overflow or turn NaN (its
  weights finite but absurd, a fine-tune that diverged) has no meaningful NLL:
  it is held back with that reason, never compared, and never raises, so the
  worker records the reason instead of failing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from adapters.device.multi_lora import MultiLoraModel
from adapters.lora_weights import LoraWeights
from finetune.bootstrap import (
    DEFAULT_CONFIDENCE,
    GainInterval,
    fewest_conversations_to_judge,
    paired_gain_interval,
)
from finetune.config import SERVED_TOP_K
from finetune.conversations import IGNORED, TokenizedConversation
from finetune.factual_probes import FactualProbe, probe_answered
from finetune.training import make_batch
from models.chat_format import prompt_ids

GENERIC_MAX_TOKENS = 256
# Enough for a short factual answer; the probes were checked at this length.
PROBE_MAX_NEW_TOKENS = 24
# Where a base model (a plain transcript) starts inventing the next turn.
NEXT_TURN = "\nUser:"
# Sample answers kept with a report (base, current and candidate on the newest test
# conversations), for the user or an admin deciding by hand, and their length.
SAMPLE_ANSWERS = 3
SAMPLE_MAX_NEW_TOKENS = 48


@dataclass(frozen=True)
class Variant:
    """One way of answering: a list of experts, the last possibly gating the others."""

    name: str
    experts: tuple[LoraWeights, ...] = ()
    # Whether the last expert's gate mixes them all (serving's rule: it scores
    # exactly the generalists it is served with); else they are summed.
    gated: bool = False

    def __post_init__(self) -> None:
        if self.gated and not (self.experts and self.experts[-1].has_gate):
            raise ValueError(f"variant {self.name}: gated, but its last expert has no gate")


@dataclass(frozen=True)
class Scores:
    """Summed NLL (nats) and scored tokens per conversation, in input order."""

    nll: tuple[float, ...]
    tokens: tuple[int, ...]

    @property
    def per_token(self) -> float:
        return sum(self.nll) / sum(self.tokens)

    @property
    def non_finite(self) -> int:
        """How many conversations scored NaN or infinity."""
        return sum(1 for value in self.nll if not math.isfinite(value))


class VariantScorer:
    """Scores conversations under several expert variants of one base model."""

    def __init__(self, model: Any, variants: Sequence[Variant], *, pad_id: int) -> None:
        self.model = model
        self.pad_id = pad_id
        self.variants = {v.name: v for v in variants}
        experts = [w for v in variants for w in v.experts]
        max_rank = max((w.rank for w in experts), default=1)
        # Serving's top-k; the pool must be at least that wide to accept it.
        width = max([SERVED_TOP_K, *(len(v.experts) for v in variants)])
        self.handle = MultiLoraModel.wrap(
            model,
            num_slots=max(2, len(experts) + 1),
            max_rank=max_rank,
            max_experts=width,
            top_k=SERVED_TOP_K,
        )
        self._slots: dict[str, tuple[list[int], int]] = {}
        slot = 1
        for variant in variants:
            slots: list[int] = []
            for weights in variant.experts:
                self.handle.load(slot, weights)
                slots.append(slot)
                slot += 1
            gate = slots[-1] if variant.gated else 0
            self._slots[variant.name] = (slots + [0] * (width - len(slots)), gate)

    @torch.inference_mode()
    def score(
        self, name: str, conversations: Sequence[TokenizedConversation], *, batch_size: int = 8
    ) -> Scores:
        slots, gate = self._slots[name]
        device = self.handle.device
        nll: list[float] = []
        tokens: list[int] = []
        for start in range(0, len(conversations), batch_size):
            group = conversations[start : start + batch_size]
            batch = make_batch(group, pad_id=self.pad_id, device=device)
            rows = len(group)
            if any(slots):
                with self.handle.routing([slots] * rows, gate_slots=[gate] * rows):
                    logits = self.model(
                        input_ids=batch.input_ids, attention_mask=batch.attention_mask
                    ).logits
            else:
                logits = self.model(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask
                ).logits
            labels = batch.labels[:, 1:]
            losses = F.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), labels, reduction="none"
            )
            scored = labels != IGNORED
            nll += (losses * scored).sum(dim=1).tolist()
            tokens += scored.sum(dim=1).tolist()
        return Scores(nll=tuple(nll), tokens=tuple(int(t) for t in tokens))

    @torch.inference_mode()
    def generate(
        self,
        name: str,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        batch_size: int = 16,
    ) -> list[list[int]]:
        """Greedy replies to ``prompts`` under one variant (left-padded batches)."""
        slots, gate = self._slots[name]
        device = self.handle.device
        replies: list[list[int]] = []
        for start in range(0, len(prompts), batch_size):
            group = prompts[start : start + batch_size]
            width = max(len(p) for p in group)
            ids = torch.full((len(group), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, prompt in enumerate(group):
                ids[row, width - len(prompt) :] = torch.tensor(list(prompt))
                mask[row, width - len(prompt) :] = 1
            kwargs = {
                "input_ids": ids.to(device),
                "attention_mask": mask.to(device),
                "max_new_tokens": max_new_tokens,
                "do_sample": False,
                "pad_token_id": self.pad_id,
            }
            if any(slots):
                with self.handle.routing([slots] * len(group), gate_slots=[gate] * len(group)):
                    output = self.model.generate(**kwargs)
            else:
                output = self.model.generate(**kwargs)
            replies += [row[width:].tolist() for row in output]
        return replies


@dataclass(frozen=True)
class ProbeSet:
    """The factual probes as one base model is asked them."""

    probes: tuple[FactualProbe, ...]
    prompts: tuple[tuple[int, ...], ...]
    tokenizer: Any

    @classmethod
    def build(cls, tokenizer: Any, probes: Sequence[FactualProbe]) -> ProbeSet:
        prompts = tuple(
            tuple(prompt_ids(tokenizer, [{"role": "user", "content": p.question}])) for p in probes
        )
        return cls(tuple(probes), prompts, tokenizer)

    def answered(self, scorer: VariantScorer, name: str) -> tuple[bool, ...]:
        """Which probes the variant ``name`` answers right."""
        # One batch: a decoding step through the multi-LoRA layers costs about the same
        # for 1 row as for 32 on a CPU (per-layer overhead), so fewer, wider steps.
        replies = scorer.generate(
            name, self.prompts, max_new_tokens=PROBE_MAX_NEW_TOKENS, batch_size=32
        )
        texts = [
            self.tokenizer.decode(reply, skip_special_tokens=True).split(NEXT_TURN)[0]
            for reply in replies
        ]
        return tuple(probe_answered(p, t) for p, t in zip(self.probes, texts, strict=True))


def generic_conversations(tokenizer: Any, texts: Sequence[str]) -> list[TokenizedConversation]:
    """Plain text, every token scored (a language-modelling check, not a chat one)."""
    found: list[TokenizedConversation] = []
    for text in texts:
        ids = list(tokenizer(text)["input_ids"])[:GENERIC_MAX_TOKENS]
        found.append(TokenizedConversation(input_ids=ids, labels=ids))
    return found


@dataclass(frozen=True)
class GateRules:
    confidence: float = DEFAULT_CONFIDENCE
    max_generic_rise: float = 0.10  # relative to the base model's generic NLL
    # Of the factual probes the base model answers, the share the candidate may lose.
    max_probe_loss: float = 0.05
    resamples: int = 2000
    # Where the limits were set, named in a hold-back reason so they can be changed.
    generic_rise_source: str = "TAILOR_FINETUNE_MAX_GENERIC_RISE"
    probe_loss_source: str = "TAILOR_FINETUNE_MAX_PROBE_LOSS"

    def __post_init__(self) -> None:
        if not 0 < self.confidence < 1:
            raise ValueError("confidence must lie in (0, 1)")
        if self.max_generic_rise < 0:
            raise ValueError("max_generic_rise must not be negative")
        if not 0 <= self.max_probe_loss < 1:
            raise ValueError("max_probe_loss must lie in [0, 1)")
        if self.resamples < 1:
            raise ValueError("resamples must be at least 1")


@dataclass(frozen=True)
class EvaluationReport:
    test_conversations: int
    test_tokens: int
    nll_per_token: dict[str, float]  # base, current, candidate
    gain_vs_base: GainInterval
    gain_vs_current: GainInterval | None  # None when current is the base model
    generic_nll_per_token: dict[str, float]  # base, candidate
    generic_rise: float
    promote: bool
    reasons: list[str] = field(default_factory=list)
    # "promote", "hold_back", or "not_enough_data" (too few held-out conversations
    # to show a gain at all: a person decides).
    verdict: str = "hold_back"
    # Factual probes answered by the base model and by the candidate, of ``probes_asked``;
    # the questions the candidate lost. None when no probes were asked.
    probes_asked: int = 0
    probes_answered: dict[str, int] | None = None
    probes_lost: list[str] = field(default_factory=list)
    # {"question", "base", "current", "candidate"} on the newest test conversations.
    samples: list[dict[str, str]] = field(default_factory=list)
    # The limits it was judged by and where each was set (the service's or the user's).
    limits: dict[str, Any] = field(default_factory=dict)

    def as_metrics(self) -> dict[str, Any]:
        """What the registry stores with the candidate (JSON)."""
        metrics: dict[str, Any] = _finite(asdict(self))
        # A property, which asdict leaves out; the dashboard shows it.
        metrics["gain_vs_base"]["significant"] = self.gain_vs_base.significant
        metrics["gain_vs_base"]["enough_data"] = self.gain_vs_base.enough_data
        if self.gain_vs_current is not None:
            metrics["gain_vs_current"]["significant"] = self.gain_vs_current.significant
            metrics["gain_vs_current"]["enough_data"] = self.gain_vs_current.enough_data
        return metrics


class BaseScoreCache:
    """The base model's scores on the fixed generic passages and probes.

    They depend only on the base model's weights and the fixed sets, not on the
    user, so a worker computes them once per base model instead of once per job.
    Keyed by the caller's name for the weights (the base model's sha256) and the
    sets' token ids, so a changed set is scored afresh.
    """

    def __init__(self) -> None:
        self._generic: dict[tuple[str, int], Scores] = {}
        self._probes: dict[tuple[str, int], tuple[bool, ...]] = {}

    def generic(
        self, weights: str, scorer: VariantScorer, generic: Sequence[TokenizedConversation]
    ) -> tuple[Scores, bool]:
        """The scores, and whether they were kept from an earlier job."""
        key = (weights, hash(tuple(tuple(c.input_ids) for c in generic)))
        kept = key in self._generic
        if not kept:
            self._generic[key] = scorer.score("base", generic)
        return self._generic[key], kept

    def probes(
        self, weights: str, scorer: VariantScorer, probes: ProbeSet
    ) -> tuple[tuple[bool, ...], bool]:
        """Which probes the base model answers, and whether that was kept."""
        key = (weights, hash(probes.prompts))
        kept = key in self._probes
        if not kept:
            self._probes[key] = probes.answered(scorer, "base")
        return self._probes[key], kept


# A stage of an evaluation is done: (its name, stages done, stages in all).
StageCallback = Callable[[str, int, int], None]


def evaluate_candidate(
    scorer: VariantScorer,
    test: Sequence[TokenizedConversation],
    generic: Sequence[TokenizedConversation],
    *,
    probes: ProbeSet | None = None,
    tokenizer: Any = None,
    rules: GateRules = GateRules(),
    base_scores: tuple[BaseScoreCache, str] | None = None,
    on_stage: StageCallback = lambda *_: None,
) -> EvaluationReport:
    """Scores ``base``, ``current`` and ``candidate`` variants and applies the gate rules;
    with a ``tokenizer``, keeps their answers to the newest test questions as samples.

    ``base_scores`` (a cache and the base model's weights id) reuses the base model's
    generic and probe scores across jobs; ``on_stage`` hears of each stage as it ends.
    """
    has_current = "current" in scorer.variants and bool(scorer.variants["current"].experts)
    has_probes = probes is not None and bool(probes.probes)
    # test split (base, candidate, current?), generic text (2), probes (2?), samples?
    total = 4 + has_current + 2 * has_probes + (tokenizer is not None)
    done = 0

    def stage(name: str) -> None:
        nonlocal done
        done += 1
        on_stage(name, done, total)

    base = scorer.score("base", test)
    stage("test split: base model")
    candidate = scorer.score("candidate", test)
    stage("test split: candidate")
    current = base
    if has_current:
        current = scorer.score("current", test)
        stage("test split: current experts")
    gain_base = _gain(base, candidate, rules)
    gain_current = _gain(current, candidate, rules) if has_current else None
    kept = ""
    if base_scores is None:
        generic_base = scorer.score("base", generic)
    else:
        generic_base, reused = base_scores[0].generic(base_scores[1], scorer, generic)
        kept = " (kept from an earlier job)" if reused else ""
    stage("generic text: base model" + kept)
    generic_candidate = scorer.score("candidate", generic)
    stage("generic text: candidate")
    rise = generic_candidate.per_token / generic_base.per_token - 1.0
    lost: list[str] = []
    answered: dict[str, int] | None = None
    if probes is not None and has_probes:
        kept = ""
        if base_scores is None:
            by_base = probes.answered(scorer, "base")
        else:
            by_base, reused = base_scores[0].probes(base_scores[1], scorer, probes)
            kept = " (kept from an earlier job)" if reused else ""
        stage("factual probes: base model" + kept)
        by_candidate = probes.answered(scorer, "candidate")
        stage("factual probes: candidate")
        answered = {"base": sum(by_base), "candidate": sum(by_candidate)}
        lost = [
            p.question
            for p, b, c in zip(probes.probes, by_base, by_candidate, strict=True)
            if b and not c
        ]

    # Once a score is NaN or infinite no comparison means anything: those
    # reasons replace the rules' (a NaN compares false and would pass them).
    scored = [
        ("the candidate", "test split", candidate),
        ("the candidate", "generic text", generic_candidate),
        ("the base model", "test split", base),
        ("the base model", "generic text", generic_base),
    ]
    if has_current:
        scored.append(("the current experts", "test split", current))
    samples: list[dict[str, str]] = []
    if tokenizer is not None:
        samples = sample_answers(scorer, test, tokenizer=tokenizer)
        stage("sample answers")
    # Generic text and probes judge the candidate whatever the test split's size; the
    # gain needs enough held-out conversations to mean anything.
    too_little = not gain_base.enough_data
    wrong = _generic_reasons(rise, rules) + _probe_reasons(lost, answered, rules)
    if too_little:
        reasons, verdict = [_too_little_reason(len(test), rules), *wrong], "not_enough_data"
    else:
        reasons, verdict = _gain_reasons(gain_base, gain_current, rules) + wrong, "hold_back"
    if wrong:
        verdict = "hold_back"
    non_finite = _non_finite_reasons(scored)
    if non_finite:
        reasons, verdict = non_finite, "hold_back"
    elif not reasons:
        verdict = "promote"
    return EvaluationReport(
        test_conversations=len(test),
        test_tokens=sum(base.tokens),
        nll_per_token={
            "base": base.per_token,
            "current": current.per_token,
            "candidate": candidate.per_token,
        },
        gain_vs_base=gain_base,
        gain_vs_current=gain_current,
        generic_nll_per_token={
            "base": generic_base.per_token,
            "candidate": generic_candidate.per_token,
        },
        generic_rise=rise,
        promote=not reasons,
        reasons=reasons,
        verdict=verdict,
        probes_asked=0 if probes is None else len(probes.probes),
        probes_answered=answered,
        probes_lost=lost,
        samples=samples,
        limits={
            "max_generic_rise": rules.max_generic_rise,
            "max_generic_rise_set_by": rules.generic_rise_source,
            "max_probe_loss": rules.max_probe_loss,
            "max_probe_loss_set_by": rules.probe_loss_source,
        },
    )


def sample_answers(
    scorer: VariantScorer, test: Sequence[TokenizedConversation], *, tokenizer: Any
) -> list[dict[str, str]]:
    """Greedy answers of base, current and candidate to the newest test questions."""
    if not test:
        return []
    chosen = list(test)[-SAMPLE_ANSWERS:]
    prompts = [c.first_prompt for c in chosen]
    # "current" only when the user is served experts now (else it is the base model).
    names = [
        n
        for n in ("base", "current", "candidate")
        if n in scorer.variants and (n != "current" or scorer.variants[n].experts)
    ]
    replies = {
        name: scorer.generate(name, prompts, max_new_tokens=SAMPLE_MAX_NEW_TOKENS) for name in names
    }
    return [
        {"question": c.question}
        | {
            name: tokenizer.decode(replies[name][i], skip_special_tokens=True)
            .split(NEXT_TURN)[0]
            .strip()
            for name in names
        }
        for i, c in enumerate(chosen)
    ]


def _probe_reasons(
    lost: Sequence[str], answered: dict[str, int] | None, rules: GateRules
) -> list[str]:
    if answered is None:
        return []
    allowed = math.floor(rules.max_probe_loss * answered["base"])
    if len(lost) <= allowed:
        return []
    shown = "; ".join(repr(q) for q in lost[:3]) + ("; ..." if len(lost) > 3 else "")
    return [
        f"forgot {len(lost)} of the {answered['base']} factual probes the base model answers "
        f"(at most {allowed} allowed, {rules.max_probe_loss:.0%}: {rules.probe_loss_source}): "
        f"{shown}"
    ]


def _too_little_reason(conversations: int, rules: GateRules) -> str:
    return (
        f"not enough data to judge: {conversations} held-out conversation(s) cannot show a "
        f"gain with {rules.confidence:.0%} confidence (at least "
        f"{fewest_conversations_to_judge(rules.confidence)} are needed); add examples, or read "
        "the figures and sample answers and promote it by hand"
    )


def _gain(baseline: Scores, candidate: Scores, rules: GateRules) -> GainInterval:
    if baseline.non_finite or candidate.non_finite:
        # No interval exists; a NaN one is never significant and stores as null.
        nan = math.nan
        return GainInterval(nan, nan, nan, resamples=rules.resamples, confidence=rules.confidence)
    return paired_gain_interval(
        baseline.nll,
        candidate.nll,
        baseline.tokens,
        confidence=rules.confidence,
        resamples=rules.resamples,
    )


def _non_finite_reasons(scored: Sequence[tuple[str, str, Scores]]) -> list[str]:
    return [
        f"{who}'s NLL on the {where} is not finite ({scores.non_finite} of "
        f"{len(scores.nll)} conversations scored NaN or infinity): its logits overflow or are "
        "NaN, so nothing can be compared"
        for who, where, scores in scored
        if scores.non_finite
    ]


def _gain_reasons(
    gain_base: GainInterval, gain_current: GainInterval | None, rules: GateRules
) -> list[str]:
    reasons: list[str] = []
    if not gain_base.significant:
        reasons.append(f"not better than the base model: {_gain_figures(gain_base, rules)}")
    if gain_current is not None and not gain_current.significant:
        reasons.append(f"not better than the current experts: {_gain_figures(gain_current, rules)}")
    return reasons


def _generic_reasons(rise: float, rules: GateRules) -> list[str]:
    reasons: list[str] = []
    if rise > rules.max_generic_rise:
        reasons.append(
            f"generic text NLL rose {rise:.2%} (at most {rules.max_generic_rise:.0%} allowed, "
            f"{rules.generic_rise_source})"
        )
    return reasons


def _gain_figures(gain: GainInterval, rules: GateRules) -> str:
    return (
        f"gain {gain.gain:.4f} nats/token, {rules.confidence:.0%} lower bound {gain.lower:.4f}, "
        f"sign-flip p {gain.p_value:.3f} over {gain.conversations} conversations"
    )


def _finite(value: Any) -> Any:
    # JSON has no NaN or infinity; a report must always store.
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
