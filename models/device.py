"""Where a model runs: the one reading of a device setting, ``auto`` included.

``TAILOR_DEVICE`` (serving) and ``TAILOR_FINETUNE_DEVICE`` (the fine-tune worker) take
``auto``, ``cpu``, ``cuda`` or ``cuda:N``. Serving's model host, the fine-tune worker and
Ray Serve's resource request (does a model replica need a GPU?) all resolve them here,
so ``auto`` cannot mean one thing when a model is loaded and another when its replica's
GPUs are reserved. It sits beside the model store (how prepared models are loaded) in
``models``, a layer below both serving and fine-tuning.

Invariants: ``auto`` is ``cuda`` (torch's current device) when torch sees a GPU, else
``cpu``; any other setting is kept as written. torch is imported only to answer
``auto`` or to build a ``torch.device``, so deciding a Ray replica's resources from an
explicit setting stays torch-free, and ``models.store`` does not re-export this
module (listing the store imports no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

AUTO = "auto"


def device_name(setting: str) -> str:
    """The device a setting names, as torch spells it: ``auto`` resolved, else as given."""
    if setting != AUTO:
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_device(setting: str) -> torch.device:
    """``device_name(setting)`` as a ``torch.device``."""
    import torch

    return torch.device(device_name(setting))
