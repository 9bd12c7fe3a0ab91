"""How long and how hard one job trains, sized to the user's data.

Counting in epochs fails on small data: 24 conversations at a batch of 8 are 3
optimiser steps an epoch, so the old default of 2 epochs made 6 steps, too few
to learn a style, and the gate then judged an adapter that had barely moved.
What learning needs is closer to a number of examples seen and a number of
steps, so a plan fixes those and derives the rest:

- the batch is at most ``TrainingConfig.batch_size`` and small enough that an
  epoch has ``MIN_STEPS_PER_EPOCH`` steps (a tiny set still takes several
  steps an epoch, not one step of everything);
- the epochs follow OpenAI's published rule for its fine-tuning API: 3,
  raised until ``min_examples_seen`` examples have been seen, at most
  ``max_epochs``; the steps they make are floored at ``min_steps``;
- the learning rate scales with the square root of the batch against the
  reference batch the default rate was chosen at (a smaller batch is a noisier
  gradient);
- the rate warms up over ``warmup_fraction`` of the steps, then falls linearly
  to a tenth; training stops early when the validation loss has not improved
  for ``patience`` checks, and the best checkpoint is kept
  (``finetune.training``).

Whatever the caller set (``steps`` or ``epochs``, ``batch_size``,
``learning_rate``) is used as given; ``learning_rate_multiplier`` (OpenAI's)
scales the rate the plan picks. Pure arithmetic: no torch, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from finetune.config import TrainingConfig

# The batch the default learning rate was chosen at.
REFERENCE_BATCH = 8
MIN_STEPS_PER_EPOCH = 4
# Validation checks per run on large sets (each costs a pass over the validation split);
# a small set is checked once an epoch.
MAX_CHECKS = 10


@dataclass(frozen=True)
class TrainingPlan:
    batch_size: int
    steps: int
    steps_per_epoch: int
    learning_rate: float
    warmup_steps: int
    check_every: int  # steps between validation checks (early stopping)
    patience: int  # checks without improvement before stopping
    chosen: tuple[str, ...]  # which values the caller set; the rest were sized to the data

    @property
    def epochs(self) -> float:
        return self.steps / self.steps_per_epoch

    def payload(self) -> dict[str, Any]:
        """The job event that says how the job will train, and why."""
        plan = asdict(self)
        plan["epochs"] = round(self.epochs, 2)
        plan["chosen"] = list(self.chosen)
        return plan


def plan_training(config: TrainingConfig, *, train_conversations: int) -> TrainingPlan:
    """The plan for ``train_conversations`` training conversations under ``config``."""
    if train_conversations < 1:
        raise ValueError("a plan needs at least one training conversation")
    n = train_conversations
    chosen = tuple(
        name
        for name, given in (
            ("steps", config.steps is not None),
            ("epochs", config.epochs is not None),
            ("batch_size", "batch_size" in config.set_by_caller),
            ("learning_rate", "learning_rate" in config.set_by_caller),
            ("learning_rate_multiplier", "learning_rate_multiplier" in config.set_by_caller),
        )
        if given
    )
    if "batch_size" in config.set_by_caller:
        batch = min(config.batch_size, n)
    else:
        batch = max(1, min(config.batch_size, n // MIN_STEPS_PER_EPOCH))
    per_epoch = math.ceil(n / batch)
    if config.steps is not None:
        steps = config.steps
    elif config.epochs is not None:
        steps = config.epochs * per_epoch
    else:
        epochs = min(config.max_epochs, max(3, math.ceil(config.min_examples_seen / n)))
        steps = min(config.max_epochs * per_epoch, max(config.min_steps, epochs * per_epoch))
    if "learning_rate" in config.set_by_caller:
        rate = config.learning_rate
    else:
        rate = (
            config.learning_rate
            * math.sqrt(batch / REFERENCE_BATCH)
            * config.learning_rate_multiplier
        )
    return TrainingPlan(
        batch_size=batch,
        steps=steps,
        steps_per_epoch=per_epoch,
        learning_rate=rate,
        warmup_steps=math.floor(steps * config.warmup_fraction),
        check_every=min(per_epoch, math.ceil(steps / MAX_CHECKS)),
        patience=config.patience,
        chosen=chosen,
    )
