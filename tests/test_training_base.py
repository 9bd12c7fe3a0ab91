"""The training base passes true gradients, NF4 included, after an evaluation pass.

bitsandbytes repacks NF4 weights for CPU inference after the first no-grad
eval-mode forward, and repacked layers pass no gradient back: every job's
validation check before its first step did that, and the experts then learnt
from a gradient with the frozen layers' part missing (the training loss rose).
A gradient checked against a finite difference catches any such silent loss.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from finetune.base_loading import load_training_base
from finetune.config import Quantization, TrainingConfig
from finetune.conversations import tokenize_conversation
from finetune.experts import attach_experts
from finetune.training import batch_loss, make_batch, validation_loss
from tests.finetune_fixtures import MODEL, pirate_conversations
from tests.server import prepared_model_store


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["nf4", "none"])
def test_the_lowest_expert_gets_the_true_gradient_after_a_validation_pass(
    quantization: Quantization,
) -> None:
    model_dir = prepared_model_store() / MODEL
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    conversations = [
        tokenize_conversation(tokenizer, c, max_length=512) for c in pirate_conversations(3)
    ]
    torch.manual_seed(0)
    model = load_training_base(model_dir, quantization=quantization, device=torch.device("cpu"))
    experts = attach_experts(
        model, TrainingConfig(quantization=quantization, rank=4, alpha=8.0), base_model_id=MODEL
    )
    with torch.no_grad():  # B starts at zero, which would leave A without a gradient
        for name, parameter in experts.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.01)
    # What every job does before its first step (and what repacked NF4 weights).
    validation_loss(experts.model, conversations, pad_id=0, batch_size=3)

    # The first layer's expert: its gradient crosses every frozen layer above it.
    lowest = next(
        p
        for n, p in experts.model.named_parameters()
        if "layers.0.self_attn.q_proj" in n and "lora_A" in n
    )
    batch = make_batch(conversations, pad_id=0, device=torch.device("cpu"))
    experts.model.train()
    batch_loss(experts.model, batch).backward()  # type: ignore[no-untyped-call]
    assert lowest.grad is not None
    direction = lowest.grad / lowest.grad.norm()
    analytic = float((lowest.grad * direction).sum())
    step = 1e-2
    with torch.no_grad():
        lowest.add_(step * direction)
        above = float(batch_loss(experts.model, batch))
        lowest.sub_(2 * step * direction)
        below = float(batch_loss(experts.model, batch))
    numeric = (above - below) / (2 * step)
    assert numeric == pytest.approx(analytic, rel=0.05)
