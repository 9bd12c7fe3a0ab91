"""Training sized to the data: the plan's arithmetic, and a real run that stops early
and keeps its best checkpoint."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from finetune.base_loading import load_training_base
from finetune.config import TrainingConfig
from finetune.conversations import TimeSplit, tokenize_conversation
from finetune.experts import attach_experts
from finetune.training import (
    Progress,
    _rate_factor,
    gate_and_check,
    train_experts,
    validation_loss,
)
from finetune.training_plan import TrainingPlan, plan_training
from tests.finetune_fixtures import MODEL, pirate_conversations
from tests.server import prepared_model_store


def test_a_small_set_trains_for_enough_steps_and_a_large_one_for_three_epochs() -> None:
    small = plan_training(TrainingConfig(), train_conversations=20)
    # 24 conversations with the old default were 2 epochs of 3 steps: 6 steps, no style.
    assert small.batch_size == 5 and small.steps_per_epoch == 4
    assert small.steps == 40 and small.epochs == 10
    assert small.steps * small.batch_size >= 200  # examples seen
    assert small.learning_rate == pytest.approx(1e-3 * (5 / 8) ** 0.5)
    assert small.warmup_steps == 4 and small.check_every == 4 and small.chosen == ()

    large = plan_training(TrainingConfig(), train_conversations=1000)
    assert large.batch_size == 8 and large.epochs == 3 and large.steps == 375
    assert large.check_every == 38  # about ten checks a run

    tiny = plan_training(TrainingConfig(), train_conversations=3)
    assert tiny.batch_size == 1 and tiny.epochs == 25 and tiny.steps == 75  # at most 25 epochs
    assert tiny.check_every == 3  # once an epoch
    with pytest.raises(ValueError):
        plan_training(TrainingConfig(), train_conversations=0)


def test_what_the_caller_sets_is_used_as_given() -> None:
    config = TrainingConfig().with_hyperparameters(
        {"epochs": 2, "batch_size": 3, "learning_rate": 5e-4}
    )
    plan = plan_training(config, train_conversations=20)
    assert (plan.batch_size, plan.steps_per_epoch, plan.steps) == (3, 7, 14)
    assert plan.learning_rate == 5e-4 and set(plan.chosen) == {
        "epochs",
        "batch_size",
        "learning_rate",
    }
    steps = plan_training(
        TrainingConfig().with_hyperparameters({"steps": 7}), train_conversations=20
    )
    assert steps.steps == 7 and steps.chosen == ("steps",)
    assert plan.payload()["epochs"] == 2.0 and plan.payload()["chosen"] == list(plan.chosen)
    with pytest.raises(ValueError, match="not both"):
        TrainingConfig().with_hyperparameters({"steps": 7, "epochs": 2})
    with pytest.raises(ValueError):
        TrainingConfig(steps=0)
    with pytest.raises(ValueError):
        TrainingConfig(warmup_fraction=1.0)


def test_the_rate_warms_up_then_falls_to_a_tenth() -> None:
    plan = plan_training(TrainingConfig(), train_conversations=20)  # 40 steps, 4 to warm up
    factors = [_rate_factor(step, plan) for step in range(plan.steps + 1)]
    assert factors[0] == pytest.approx(0.1) and factors[plan.warmup_steps] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(factors[:5]))
    assert all(a > b for a, b in itertools.pairwise(factors[4:]))
    assert factors[-1] == pytest.approx(0.1)


def _split(tokenizer: Any, train: list[Any], validation: list[Any]) -> TimeSplit:
    def tokenized(conversations: list[Any]) -> list[Any]:
        return [tokenize_conversation(tokenizer, m, max_length=512) for m in conversations]

    return TimeSplit(train=tokenized(train), validation=tokenized(validation), test=[])


@pytest.mark.slow
def test_a_run_that_goes_wrong_stops_early_and_keeps_its_best_checkpoint() -> None:
    model_dir = prepared_model_store() / MODEL
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    conversations = pirate_conversations(10)
    split = _split(tokenizer, conversations[:6], conversations[6:])
    config = TrainingConfig(quantization="none", rank=4, alpha=8.0)
    torch.manual_seed(0)
    model = load_training_base(model_dir, quantization="none", device=torch.device("cpu"))
    experts = attach_experts(model, config, base_model_id=MODEL, generalists=())
    # A rate far too high: the validation loss soon stops improving.
    plan = TrainingPlan(
        batch_size=3,
        steps=12,
        steps_per_epoch=2,
        learning_rate=0.1,
        warmup_steps=0,
        check_every=1,
        patience=1,
        chosen=(),
    )
    seen: list[Progress] = []

    report = train_experts(experts, split, pad_id=0, plan=plan, on_progress=seen.append)

    checked = [p.validation_loss for p in seen]
    assert all(v is not None for v in checked) and len(seen) == report.steps
    assert report.stopped_early and report.steps < plan.steps
    assert checked[-1] is not None and checked[-1] >= report.best_validation_loss
    everything = [report.first_validation_loss, *(v for v in checked if v is not None)]
    assert report.best_validation_loss == min(everything)
    assert seen[-1].total_steps == report.steps and seen[-1].eta_seconds == 0
    # What the run leaves in the model is the best checkpoint, not the last step.
    now = validation_loss(model, split.validation, pad_id=0, batch_size=3)
    assert now == pytest.approx(report.best_validation_loss, rel=1e-4)


@pytest.mark.slow
def test_a_run_that_keeps_improving_trains_to_the_end() -> None:
    model_dir = prepared_model_store() / MODEL
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    conversations = pirate_conversations(12)
    split = _split(tokenizer, conversations[:8], conversations[8:])
    config = TrainingConfig(quantization="none", rank=4, alpha=8.0)
    torch.manual_seed(0)
    model = load_training_base(model_dir, quantization="none", device=torch.device("cpu"))
    experts = attach_experts(model, config, base_model_id=MODEL, generalists=())
    plan = dataclasses.replace(
        plan_training(config, train_conversations=8), steps=3, check_every=3, warmup_steps=0
    )

    report = train_experts(experts, split, pad_id=0, plan=plan)

    assert not report.stopped_early and report.steps == 3 and report.best_step == 3
    assert report.best_validation_loss < report.first_validation_loss


def test_the_gate_and_the_checks_never_share_a_conversation() -> None:
    items = [tokenize_stub(i) for i in range(5)]
    gate, check = gate_and_check(items, has_gate=True)
    assert not {id(c) for c in gate} & {id(c) for c in check}
    assert len(gate) + len(check) == 5 and len(check) == 2  # the gate gets the odd one
    assert gate_and_check(items, has_gate=False) == ([], items)
    with pytest.raises(ValueError, match="two validation"):
        gate_and_check(items[:1], has_gate=True)


def tokenize_stub(index: int) -> Any:
    from finetune.conversations import TokenizedConversation

    return TokenizedConversation(input_ids=[index, index + 1], labels=[index, index + 1])


@pytest.mark.slow
def test_a_mixture_checks_on_validation_data_its_gate_did_not_learn_on() -> None:
    """With a gate, early stopping and the kept checkpoint go by held-aside data:
    checked on what the gate fits, the loss only falls and the best check is the last."""
    model_dir = prepared_model_store() / MODEL
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    conversations = pirate_conversations(12)
    split = _split(tokenizer, conversations[:8], conversations[8:])
    config = TrainingConfig(quantization="none", rank=4, alpha=8.0, gate_every=1)
    torch.manual_seed(0)
    generalist_model = load_training_base(
        model_dir, quantization="none", device=torch.device("cpu")
    )
    generalist = attach_experts(generalist_model, config, base_model_id=MODEL, generalists=())
    for parameter in generalist.expert_parameters():
        torch.nn.init.normal_(parameter, std=0.02)
    generalists = [("adp_general", generalist.export())]
    model = load_training_base(model_dir, quantization="none", device=torch.device("cpu"))
    experts = attach_experts(model, config, base_model_id=MODEL, generalists=generalists)
    assert experts.gate_parameters()
    plan = dataclasses.replace(
        plan_training(config, train_conversations=8),
        steps=4,
        check_every=1,
        warmup_steps=0,
        patience=10,
    )

    report = train_experts(experts, split, pad_id=0, plan=plan)

    gate_data, check_data = gate_and_check(split.validation, has_gate=True)
    assert gate_data and check_data and report.gate_steps == 4
    # The kept checkpoint's figure is the held-aside half's loss, not the whole split's.
    held_aside = validation_loss(model, check_data, pad_id=0, batch_size=3)
    assert held_aside == pytest.approx(report.best_validation_loss, rel=1e-4)
    everything = validation_loss(model, split.validation, pad_id=0, batch_size=3)
    assert everything != pytest.approx(report.best_validation_loss, rel=1e-4)
