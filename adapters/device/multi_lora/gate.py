"""The CoMiGS gate's weights from its logits: the one definition, served and trained.

Serving's ``MultiLoraLinear`` and training's ``finetune.experts.GatedExperts`` both
turn gate logits into per-token expert weights here, so what a specialist learns to
mix is exactly what serving mixes. It lives with the device-side LoRA code (serving's
hot path); training imports it from here.

Invariants: the weights are float32 whatever the logits' dtype (a bf16 pool must not
coarsen the mixture); each token's weights sum to 1; with ``top_k`` at least the
number of experts it is a plain softmax, else the top ``top_k`` logits are softmaxed
and every other expert gets exactly 0. Ties in ``topk`` resolve as torch resolves
them, the same in both callers. No host sync and shapes depend only on the input's,
so the serving path stays capturable in a CUDA graph.
"""

from __future__ import annotations

import torch


def gate_weights(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Per-token expert weights from gate logits ``[..., E]``: top-k softmax, float32."""
    logits = logits.float()
    experts = logits.shape[-1]
    if top_k >= experts:
        return logits.softmax(dim=-1)
    top, index = logits.topk(top_k, dim=-1)
    return torch.zeros_like(logits).scatter_(-1, index, top.softmax(dim=-1))
