"""What is trained is what is served, and the gate refuses what is not better.

The training model (peft's LoRA layers wrapped with the CoMiGS gate) and
serving's MultiLoraModel must compute the same function from the same weights,
or the evaluation gate would measure one model and users would get another.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from adapters.device.multi_lora.gate import gate_weights
from adapters.lora_weights import LoraWeights
from finetune.base_loading import load_evaluation_base, load_training_base
from finetune.config import TrainingConfig
from finetune.conversations import TokenizedConversation, tokenize_conversation
from finetune.evaluation import (
    GateRules,
    ProbeSet,
    Variant,
    VariantScorer,
    evaluate_candidate,
    generic_conversations,
)
from finetune.experts import attach_experts
from finetune.factual_probes import FACTUAL_PROBES
from finetune.generic_text import GENERIC_TEXTS
from tests.finetune_fixtures import MODEL, pirate_conversations
from tests.server import prepared_model_store

CPU = torch.device("cpu")
CONFIG = TrainingConfig(quantization="none", rank=4, alpha=8.0)


def model_dir() -> Any:
    return prepared_model_store() / MODEL


def random_expert(
    config: TrainingConfig,
    generalists: list[tuple[str, LoraWeights]],
    seed: int,
    std: float = 0.05,
) -> LoraWeights:
    """An expert (with a gate beside generalists) whose every weight is random."""
    torch.manual_seed(seed)
    model = load_training_base(model_dir(), quantization="none", device=CPU)
    experts = attach_experts(model, config, base_model_id=MODEL, generalists=generalists)
    for parameter in experts.expert_parameters() + experts.gate_parameters():
        torch.nn.init.normal_(parameter, std=std)
    return experts.export()


@pytest.mark.slow
@pytest.mark.parametrize("generalist_count", [0, 1, 2])
def test_the_training_model_computes_what_serving_serves(generalist_count: int) -> None:
    generalists = [
        (f"adp_g{i}", random_expert(CONFIG, [], seed=10 + i)) for i in range(generalist_count)
    ]
    specialist = random_expert(dataclasses.replace(CONFIG, rank=8), generalists, seed=1)
    assert specialist.has_gate == bool(generalists)

    torch.manual_seed(1)
    training = load_training_base(model_dir(), quantization="none", device=CPU)
    attached = attach_experts(
        training, dataclasses.replace(CONFIG, rank=8), base_model_id=MODEL, generalists=generalists
    )
    # Load the same specialist weights into the training model's trained expert.
    for (layer, module), gated in attached.layers.items():
        lora = gated.lora_layer
        prefix = f"base_model.model.model.layers.{layer}."
        block = "self_attn" if module.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
        name = f"{prefix}{block}.{module}"
        lora.lora_A["trained"].weight.data.copy_(specialist.tensors[f"{name}.lora_A.weight"])
        lora.lora_B["trained"].weight.data.copy_(specialist.tensors[f"{name}.lora_B.weight"])
        if gated.gate is not None:
            gated.gate.data.copy_(specialist.tensors[f"{name}.tailor_gate.weight"])
    attached.model.eval()

    ids = torch.tensor([[1, 504, 3145, 314, 4649, 28, 19, 2300, 30, 1]])
    with torch.no_grad():
        trained_logits = attached.model(input_ids=ids).logits
    served = load_evaluation_base(model_dir(), device=CPU)
    experts = (*[w for _, w in generalists], specialist)
    scorer = VariantScorer(
        served, [Variant("mixture", experts, gated=specialist.has_gate)], pad_id=0
    )
    slots = list(range(1, len(experts) + 1))
    width = scorer.handle.max_experts
    with (
        torch.no_grad(),
        scorer.handle.routing(
            [slots + [0] * (width - len(slots))],
            gate_slots=[slots[-1] if specialist.has_gate else 0],
        ),
    ):
        served_logits = served(input_ids=ids).logits
    base_logits = load_evaluation_base(model_dir(), device=CPU)(input_ids=ids).logits.detach()

    assert (trained_logits - base_logits).abs().max() > 1.0  # the experts do something
    torch.testing.assert_close(trained_logits, served_logits, atol=2e-3, rtol=1e-3)


def test_top_k_keeps_the_best_experts_of_each_token() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0], [5.0, 5.0, -1.0]])
    weights = gate_weights(logits, top_k=2)
    assert weights[0, 0] == 0 and weights[1, 2] == 0
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2))
    torch.testing.assert_close(gate_weights(logits, top_k=3), logits.softmax(dim=-1))


@pytest.mark.slow
def test_a_candidate_that_is_worse_stays_a_candidate_with_the_reasons() -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    test = [
        tokenize_conversation(tokenizer, messages, max_length=512)
        for messages in pirate_conversations(5)
    ]
    # Large random weights: noise that wrecks the model.
    noisy = random_expert(dataclasses.replace(CONFIG, rank=8), [], seed=3, std=0.3)
    scorer = VariantScorer(
        load_evaluation_base(model_dir(), device=CPU),
        [Variant("base"), Variant("current"), Variant("candidate", (noisy,))],
        pad_id=0,
    )
    generic = generic_conversations(tokenizer, GENERIC_TEXTS[:4])
    probes = ProbeSet.build(tokenizer, FACTUAL_PROBES[:6])

    report = evaluate_candidate(
        scorer, test, generic, probes=probes, tokenizer=tokenizer, rules=GateRules(resamples=200)
    )

    assert report.promote is False and report.verdict == "hold_back"
    assert report.nll_per_token["candidate"] > report.nll_per_token["base"]
    assert report.gain_vs_base.upper < 0 and report.gain_vs_current is None
    assert any("not better than the base model" in r for r in report.reasons)
    # The base model answers every probe (they were chosen so); the wrecked one forgets.
    assert report.probes_asked == 6 and report.probes_answered is not None
    assert report.probes_answered["base"] == 6 > report.probes_answered["candidate"]
    assert len(report.probes_lost) == 6 - report.probes_answered["candidate"]
    assert any(r.startswith("forgot ") and "factual probes" in r for r in report.reasons)
    assert report.as_metrics()["probes_lost"] == report.probes_lost
    # Sample answers to the newest test questions, side by side, for a person deciding.
    newest = [m[0]["content"] for m in pirate_conversations(5)[-3:]]
    assert [s["question"] for s in report.samples] == newest
    assert all({"base", "candidate"} <= set(s) and s["base"] for s in report.samples)
    assert all(s["base"] != s["candidate"] for s in report.samples)
    assert any("generic text NLL rose" in r for r in report.reasons)
    metrics = report.as_metrics()
    assert metrics["promote"] is False and metrics["gain_vs_base"]["gain"] < 0
    assert metrics["gain_vs_base"]["significant"] is False


@pytest.mark.slow
def test_too_few_held_out_conversations_get_the_verdict_not_enough_data() -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    conversations = pirate_conversations(4)
    test = [tokenize_conversation(tokenizer, m, max_length=512) for m in conversations]
    # A harmless candidate: tiny weights, so generic text and probes barely move.
    tiny = random_expert(CONFIG, [], seed=5, std=1e-4)
    scorer = VariantScorer(
        load_evaluation_base(model_dir(), device=CPU),
        [Variant("base"), Variant("current"), Variant("candidate", (tiny,))],
        pad_id=0,
    )
    generic = generic_conversations(tokenizer, GENERIC_TEXTS[:2])

    report = evaluate_candidate(scorer, test, generic, rules=GateRules(resamples=200))

    assert report.promote is False and report.verdict == "not_enough_data"
    assert report.reasons == [
        "not enough data to judge: 4 held-out conversation(s) cannot show a gain with 95% "
        "confidence (at least 5 are needed); add examples, or read the figures and sample "
        "answers and promote it by hand"
    ]
    assert report.as_metrics()["gain_vs_base"]["enough_data"] is False


def test_bad_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match="rank"):
        TrainingConfig(rank=0)
    with pytest.raises(ValueError, match="quantization"):
        TrainingConfig(quantization="int3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_modules"):
        TrainingConfig(target_modules=("lm_head",))
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        TrainingConfig().with_hyperparameters({"dropout": 0.1})
    assert TrainingConfig().with_hyperparameters({"rank": 4, "epochs": 1}).rank == 4
    with pytest.raises(ValueError, match="gated"):
        Variant("x", (), gated=True)
    with pytest.raises(ValueError, match="confidence"):
        GateRules(confidence=1.0)
    assert TokenizedConversation([1], [1]).answer_tokens == 1
