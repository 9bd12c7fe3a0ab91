"""The training loop: experts on the training split, the gate on validation, alternating.

CoMiGS trains bi-level: an expert step lowers the loss on a training batch
with the gate fixed; a gate step lowers the loss on a validation batch with the
experts fixed. The gate so learns how to mix experts on data the experts have
not fitted, which is what keeps it from simply trusting the newest expert.
Without generalists there is no gate and every step is an expert step.

How long and how hard it trains is a ``TrainingPlan`` (``finetune.training_plan``):
a number of steps, with the rate warmed up and then decayed. Every ``check_every``
steps the validation loss is measured; the run keeps the experts (and gate) of
the best check and stops once ``patience`` checks in a row did not improve on it.

Invariant: the checks never score data that anything in the run has learnt from.
With a gate, the validation split is dealt into two halves (``gate_and_check``):
the gate learns on one, the checks score the other. Checked on the data the gate
fits, the loss only falls, and early stopping and the best checkpoint did nothing.

Progress goes to a callback after every step; the callback may raise to stop
(a cancel request, a lost lease), and nothing is kept from a stopped run.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from finetune.conversations import IGNORED, TimeSplit, TokenizedConversation
from finetune.experts import AttachedExperts
from finetune.training_plan import TrainingPlan, plan_training

# Steps whose durations the ETA averages: the first steps are slow (allocations, caches),
# so a mean since the start overestimates the rest for a long while.
ETA_WINDOW = 10


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    epoch: int
    loss: float  # mean over this step's answer tokens
    tokens_per_second: float  # every token the model read, since the start
    eta_seconds: float
    gate_loss: float | None = None
    validation_loss: float | None = None  # at the steps that checked it
    learning_rate: float | None = None

    def payload(self) -> dict[str, float | int | None]:
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": self.epoch,
            "loss": round(self.loss, 5),
            "gate_loss": None if self.gate_loss is None else round(self.gate_loss, 5),
            "validation_loss": (
                None if self.validation_loss is None else round(self.validation_loss, 5)
            ),
            "learning_rate": None
            if self.learning_rate is None
            else float(f"{self.learning_rate:.4g}"),
            "tokens_per_second": round(self.tokens_per_second, 1),
            "eta_seconds": round(self.eta_seconds, 1),
        }


@dataclass(frozen=True)
class TrainingReport:
    steps: int
    gate_steps: int
    tokens: int  # every token read by expert steps
    answer_tokens: int  # the tokens learnt
    seconds: float
    first_loss: float
    last_loss: float  # mean of the last epoch's steps
    # The validation loss before training, and at the check whose experts were kept.
    first_validation_loss: float = math.nan
    best_validation_loss: float = math.nan
    best_step: int = 0
    stopped_early: bool = False

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def answer_tokens(self) -> int:
        # The first label of each row is never predicted (there is no token before it).
        return int((self.labels[:, 1:] != IGNORED).sum())


def make_batch(
    conversations: Sequence[TokenizedConversation], *, pad_id: int, device: torch.device
) -> Batch:
    """Right-padded tensors; padding is masked out of attention and of the loss."""
    width = max(len(c.input_ids) for c in conversations)
    ids = torch.full((len(conversations), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(conversations), width), dtype=torch.long)
    labels = torch.full((len(conversations), width), IGNORED, dtype=torch.long)
    for row, conversation in enumerate(conversations):
        n = len(conversation.input_ids)
        ids[row, :n] = torch.tensor(conversation.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(conversation.labels)
    return Batch(ids.to(device), mask.to(device), labels.to(device))


def batches(
    conversations: Sequence[TokenizedConversation],
    *,
    batch_size: int,
    rng: random.Random,
) -> Iterator[list[TokenizedConversation]]:
    """One epoch: shuffled, then grouped by similar length so little is padding."""
    order = list(conversations)
    rng.shuffle(order)
    # Sort within windows of a few batches: most of the padding goes, the
    # order stays random from one window to the next.
    window = batch_size * 8
    grouped: list[list[TokenizedConversation]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda c: len(c.input_ids))
        grouped += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(grouped)
    yield from grouped


def batch_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    output = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels
    )
    loss: torch.Tensor = output.loss
    return loss


def train_experts(
    experts: AttachedExperts,
    split: TimeSplit,
    *,
    pad_id: int,
    plan: TrainingPlan | None = None,
    on_progress: Callable[[Progress], None] = lambda _: None,
    clock: Callable[[], float] = time.monotonic,
) -> TrainingReport:
    config = experts.config
    plan = plan or plan_training(config, train_conversations=len(split.train))
    model = experts.model
    device = next(p.device for p in model.parameters())
    rng = random.Random(config.seed)
    total_steps = plan.steps
    expert_parameters = experts.expert_parameters()
    gate_parameters = experts.gate_parameters()
    expert_optimizer = torch.optim.AdamW(
        expert_parameters, lr=plan.learning_rate, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        expert_optimizer, lambda step: _rate_factor(step, plan)
    )
    gate_optimizer = (
        torch.optim.AdamW(gate_parameters, lr=config.gate_learning_rate)
        if gate_parameters
        else None
    )
    gate_data, check_data = gate_and_check(split.validation, has_gate=bool(gate_parameters))
    validation = _cycle(gate_data, plan.batch_size, rng)
    kept = [*expert_parameters, *gate_parameters]

    first_validation = best_validation = validation_loss(
        model, check_data, pad_id=pad_id, batch_size=plan.batch_size
    )
    best_state = _copy(kept)
    best_step = checks_since_best = 0
    stopped_early = diverged = False

    started = clock()
    step = gate_steps = tokens = answer_tokens = 0
    first_loss = math.nan
    epoch_losses: list[float] = []
    step_seconds: list[float] = []
    model.train()
    epoch = 0
    while step < total_steps and not (stopped_early or diverged):
        epoch += 1
        epoch_losses = []
        for group in batches(split.train, batch_size=plan.batch_size, rng=rng):
            step_started = clock()
            batch = make_batch(group, pad_id=pad_id, device=device)
            _trainable(expert_parameters, True)
            _trainable(gate_parameters, False)
            loss = batch_loss(model, batch)
            expert_optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(expert_parameters, config.max_grad_norm)
            rate = expert_optimizer.param_groups[0]["lr"]
            expert_optimizer.step()
            schedule.step()
            step += 1
            tokens += batch.tokens
            answer_tokens += batch.answer_tokens
            value = float(loss.detach())
            first_loss = value if step == 1 else first_loss
            epoch_losses.append(value)
            # Diverged: nothing later can recover, and the weights are left as they are
            # (not the best checkpoint), so the worker's magnitude check refuses them with
            # the reason instead of registering a silent no-op.
            diverged = not math.isfinite(value)

            gate_value = None
            if gate_optimizer is not None and step % config.gate_every == 0 and not diverged:
                gate_batch = make_batch(next(validation), pad_id=pad_id, device=device)
                _trainable(expert_parameters, False)
                _trainable(gate_parameters, True)
                gate_loss = batch_loss(model, gate_batch)
                gate_optimizer.zero_grad(set_to_none=True)
                gate_loss.backward()  # type: ignore[no-untyped-call]
                gate_optimizer.step()
                gate_steps += 1
                gate_value = float(gate_loss.detach())

            checked = None
            if (step % plan.check_every == 0 or step == total_steps) and not diverged:
                checked = validation_loss(
                    model, check_data, pad_id=pad_id, batch_size=plan.batch_size
                )
                if checked < best_validation:
                    best_validation, best_step, checks_since_best = checked, step, 0
                    best_state = _copy(kept)
                else:
                    checks_since_best += 1
                    stopped_early = checks_since_best >= plan.patience and step < total_steps

            step_seconds.append(clock() - step_started)
            recent = step_seconds[-ETA_WINDOW:]
            elapsed = clock() - started
            ended = stopped_early or diverged
            remaining = 0 if ended else total_steps - step
            on_progress(
                Progress(
                    step=step,
                    total_steps=step if ended else total_steps,
                    epoch=epoch,
                    loss=value,
                    tokens_per_second=tokens / elapsed if elapsed > 0 else 0.0,
                    eta_seconds=sum(recent) / len(recent) * remaining,
                    gate_loss=gate_value,
                    validation_loss=checked,
                    learning_rate=rate,
                )
            )
            if step >= total_steps or stopped_early or diverged:
                break
    if not diverged:
        _restore(kept, best_state)
    _trainable(expert_parameters, False)
    _trainable(gate_parameters, False)
    model.eval()
    return TrainingReport(
        steps=step,
        gate_steps=gate_steps,
        tokens=tokens,
        answer_tokens=answer_tokens,
        seconds=clock() - started,
        first_loss=first_loss,
        last_loss=sum(epoch_losses) / len(epoch_losses),
        first_validation_loss=first_validation,
        best_validation_loss=best_validation,
        best_step=best_step,
        stopped_early=stopped_early,
    )


def gate_and_check(
    validation: Sequence[TokenizedConversation], *, has_gate: bool
) -> tuple[list[TokenizedConversation], list[TokenizedConversation]]:
    """What the gate learns on and what the checks score, never the same conversation.

    Without a gate the checks score all of ``validation``. With one, the split is
    dealt alternately (it is in time order, so both halves span its time) and the
    checks get the smaller half when it is odd: the gate needs the data more.
    """
    if not has_gate:
        return [], list(validation)
    if len(validation) < 2:
        raise ValueError("a gate needs two validation conversations: one to learn, one to check")
    return list(validation[0::2]), list(validation[1::2])


@torch.no_grad()
def validation_loss(
    model: nn.Module,
    conversations: Sequence[TokenizedConversation],
    *,
    pad_id: int,
    batch_size: int,
) -> float:
    """Mean NLL per answer token over ``conversations``, in eval mode (no dropout)."""
    device = next(p.device for p in model.parameters())
    was_training = model.training
    model.eval()
    total = count = 0.0
    for start in range(0, len(conversations), batch_size):
        batch = make_batch(conversations[start : start + batch_size], pad_id=pad_id, device=device)
        n = batch.answer_tokens
        total += float(batch_loss(model, batch)) * n  # the loss is a mean over answer tokens
        count += n
    model.train(was_training)
    return total / count if count else math.nan


def _rate_factor(step: int, plan: TrainingPlan) -> float:
    """Linear warm-up from a tenth, then a linear fall to a tenth: a small data set
    overfits late steps most, and a cold start at the full rate can undo the base."""
    if step < plan.warmup_steps:
        return 0.1 + 0.9 * step / plan.warmup_steps
    span = max(1, plan.steps - plan.warmup_steps)
    return 1.0 - 0.9 * min(1.0, (step - plan.warmup_steps) / span)


def _copy(parameters: Sequence[nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in parameters]


@torch.no_grad()
def _restore(parameters: Sequence[nn.Parameter], values: Sequence[torch.Tensor]) -> None:
    for parameter, value in zip(parameters, values, strict=True):
        parameter.copy_(value)


def _cycle(
    conversations: Sequence[TokenizedConversation], batch_size: int, rng: random.Random
) -> Iterator[list[TokenizedConversation]]:
    while True:
        yield from batches(conversations, batch_size=batch_size, rng=rng)


def _trainable(parameters: Sequence[nn.Parameter], on: bool) -> None:
    for parameter in parameters:
        parameter.requires_grad_(on)
