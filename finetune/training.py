"""The training loop: experts on the training split, the gate on validation, alternating.

CoMiGS trains bi-level: an expert step lowers the loss on a training batch
with the gate fixed; a gate step lowers the loss on a validation batch with the
experts fixed. The gate so learns how to mix experts on data the experts have
not fitted, which is what keeps it from simply trusting the newest expert.
Without generalists there is no gate and every step is an expert step.

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


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    epoch: int
    loss: float  # mean over this step's answer tokens
    tokens_per_second: float  # every token the model read, since the start
    eta_seconds: float
    gate_loss: float | None = None

    def payload(self) -> dict[str, float | int | None]:
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": self.epoch,
            "loss": round(self.loss, 5),
            "gate_loss": None if self.gate_loss is None else round(self.gate_loss, 5),
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
    on_progress: Callable[[Progress], None] = lambda _: None,
    clock: Callable[[], float] = time.monotonic,
) -> TrainingReport:
    config = experts.config
    model = experts.model
    device = next(p.device for p in model.parameters())
    rng = random.Random(config.seed)
    steps_per_epoch = math.ceil(len(split.train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    expert_parameters = experts.expert_parameters()
    gate_parameters = experts.gate_parameters()
    expert_optimizer = torch.optim.AdamW(
        expert_parameters, lr=config.learning_rate, weight_decay=config.weight_decay
    )
    # Linear warm-down to a tenth: small data sets overfit late steps most.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        expert_optimizer, lambda step: 1.0 - 0.9 * step / max(1, total_steps)
    )
    gate_optimizer = (
        torch.optim.AdamW(gate_parameters, lr=config.gate_learning_rate)
        if gate_parameters
        else None
    )
    validation = _cycle(split.validation, config.batch_size, rng)

    started = clock()
    step = gate_steps = tokens = answer_tokens = 0
    first_loss = math.nan
    epoch_losses: list[float] = []
    model.train()
    for epoch in range(1, config.epochs + 1):
        epoch_losses = []
        for group in batches(split.train, batch_size=config.batch_size, rng=rng):
            batch = make_batch(group, pad_id=pad_id, device=device)
            _trainable(expert_parameters, True)
            _trainable(gate_parameters, False)
            loss = batch_loss(model, batch)
            expert_optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(expert_parameters, config.max_grad_norm)
            expert_optimizer.step()
            schedule.step()
            step += 1
            tokens += batch.tokens
            answer_tokens += batch.answer_tokens
            value = float(loss.detach())
            first_loss = value if step == 1 else first_loss
            epoch_losses.append(value)

            gate_value = None
            if gate_optimizer is not None and step % config.gate_every == 0:
                gate_batch = make_batch(next(validation), pad_id=pad_id, device=device)
                _trainable(expert_parameters, False)
                _trainable(gate_parameters, True)
                gate_loss = batch_loss(model, gate_batch)
                gate_optimizer.zero_grad(set_to_none=True)
                gate_loss.backward()  # type: ignore[no-untyped-call]
                gate_optimizer.step()
                gate_steps += 1
                gate_value = float(gate_loss.detach())

            elapsed = clock() - started
            on_progress(
                Progress(
                    step=step,
                    total_steps=total_steps,
                    epoch=epoch,
                    loss=value,
                    tokens_per_second=tokens / elapsed if elapsed > 0 else 0.0,
                    eta_seconds=elapsed / step * (total_steps - step),
                    gate_loss=gate_value,
                )
            )
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
    )


def _cycle(
    conversations: Sequence[TokenizedConversation], batch_size: int, rng: random.Random
) -> Iterator[list[TokenizedConversation]]:
    while True:
        yield from batches(conversations, batch_size=batch_size, rng=rng)


def _trainable(parameters: Sequence[nn.Parameter], on: bool) -> None:
    for parameter in parameters:
        parameter.requires_grad_(on)
