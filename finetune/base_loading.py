"""The base model a job trains on: NF4 4-bit (QLoRA) or full precision.

A fresh model object per job: after ``generate()`` has run on a 4-bit model,
LoRA training on that same object was seen not to learn at all (loss identical
at every step, no error; a freshly loaded model learnt), so
training never borrows serving's model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from finetune.config import Quantization


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU; float32 on a CPU, where bf16 matmuls are slow."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_training_base(model_dir: Path, *, quantization: Quantization, device: torch.device) -> Any:
    """The base model, frozen, ready for LoRA experts on top (``model.train()`` on)."""
    from transformers import AutoModelForCausalLM

    dtype = compute_dtype(device)
    model: Any
    if quantization == "nf4":
        from peft import prepare_model_for_kbit_training

        model = AutoModelForCausalLM.from_pretrained(
            model_dir,
            quantization_config=nf4_config(dtype),
            dtype=dtype,
            device_map={"": str(device)},
        )
        # Casts norms to float32 and enables input gradients; gradient
        # checkpointing stays off: these models are small and it costs time.
        model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            model, use_gradient_checkpointing=False
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        model.to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.config.use_cache = False  # no KV cache is wanted while training
    model.train()
    return model


def load_evaluation_base(model_dir: Path, *, device: torch.device) -> Any:
    """The base model as serving runs it (not quantised): what users will get."""
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=compute_dtype(device))
    model.to(device)
    model.eval()
    return model


def nf4_config(dtype: torch.dtype) -> Any:
    """QLoRA's quantisation: NF4 with double quantisation, computing in ``dtype``."""
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise RuntimeError(
            f"4-bit training needs bitsandbytes ({error}); set quantization 'none' without it"
        ) from error
    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )
