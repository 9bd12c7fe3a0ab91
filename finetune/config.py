"""How one fine-tune job trains: the knobs, validated when built.

A job's ``hyperparameters`` (``epochs``, ``learning_rate``, ``rank`` from the
API) override the defaults; everything else is the worker's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from adapters.lora_weights import TARGET_MODULES
from adapters.multi_lora import MultiLoraConfig

Quantization = Literal["nf4", "none"]

# Serving keeps the top-k experts of each token (MultiLoraConfig.top_k); the gate
# must learn under the same rule it will be served with.
SERVED_TOP_K: int = MultiLoraConfig.top_k

# What the API may set; anything else in a job's hyperparameters is refused.
API_HYPERPARAMETERS = ("epochs", "learning_rate", "rank")


@dataclass(frozen=True)
class TrainingConfig:
    rank: int = 16
    alpha: float = 32.0
    target_modules: tuple[str, ...] = TARGET_MODULES
    epochs: int = 2
    learning_rate: float = 1e-3
    # The gate starts at zero (an even mix) and has few parameters: it can
    # move faster than the experts.
    gate_learning_rate: float = 1e-2
    # One gate step on a validation batch after every this many expert steps
    # (CoMiGS alternates the two levels).
    gate_every: int = 1
    batch_size: int = 8
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    top_k: int = SERVED_TOP_K
    # NF4 base weights (QLoRA); "none" trains on the full-precision base.
    quantization: Quantization = "nf4"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        for name in ("rank", "epochs", "gate_every", "batch_size", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("alpha", "learning_rate", "gate_learning_rate", "max_grad_norm"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must not be negative, got {self.weight_decay}")
        if self.quantization not in ("nf4", "none"):
            raise ValueError(f"quantization must be 'nf4' or 'none', got {self.quantization!r}")
        unknown = sorted(set(self.target_modules) - set(TARGET_MODULES))
        if not self.target_modules or unknown:
            raise ValueError(f"target_modules must be some of {', '.join(TARGET_MODULES)}")

    def with_hyperparameters(self, hyperparameters: dict[str, Any]) -> TrainingConfig:
        """This config with a job's API hyperparameters applied (and checked)."""
        unknown = sorted(set(hyperparameters) - set(API_HYPERPARAMETERS))
        if unknown:
            raise ValueError(f"unknown hyperparameters {unknown}")
        return dataclasses.replace(self, **hyperparameters)
