"""The base model a job trains on: NF4 4-bit (QLoRA) or full precision.

A fresh model object per job: training never borrows serving's model. On the
CPU, bitsandbytes repacks NF4 weights for inference after the first no-grad
eval-mode forward, and the repacked layers pass no gradient back; a training
model is kept from repacking (``_keep_4bit_layers_differentiable``).
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
        _keep_4bit_layers_differentiable(model)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        model.to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.config.use_cache = False  # no KV cache is wanted while training
    model.train()
    return model


def _keep_4bit_layers_differentiable(model: Any) -> None:
    """Stop bitsandbytes repacking NF4 weights for CPU inference.

    On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks a ``Linear4bit``'s
    weights the first time it runs in eval mode without gradients (our validation
    check, or a ``generate()``), and from then on every forward, training ones
    included, goes through ``gemv_4bit``, which has no backward: the gradient
    through every frozen base layer is silently dropped, so the experts learn from
    a wrong gradient and the training loss rises (measured: directional
    derivatives of the wrong sign). The repacking is an inference speed-up; a
    training model goes without it.
    """
    from bitsandbytes.nn.modules import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


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
