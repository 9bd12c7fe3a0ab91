"""Reading a PEFT adapter out of a multipart upload.

The files are recognised by their file names (``adapter_config.json``,
``adapter_model.safetensors``, optionally ``tailor_gate.safetensors``) or by
form field names without the extension, so both
``-F file=@adapter_config.json`` and ``-F adapter_config=@config.json`` work.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import FormData, UploadFile

from adapters.peft_interop import ADAPTER_CONFIG, ADAPTER_WEIGHTS, GATE_FILE
from serving.errors import ApiError

# What torch.save and pickle-based checkpoints are usually called.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_ROLES = {ADAPTER_CONFIG: "config", ADAPTER_WEIGHTS: "weights", GATE_FILE: "gate"}


@dataclass(frozen=True)
class UploadedAdapter:
    config_json: bytes
    weights: bytes
    gate: bytes | None


async def read_uploaded_adapter(form: FormData, *, max_bytes: int) -> UploadedAdapter:
    found: dict[str, bytes] = {}
    for field_name, value in form.multi_items():
        if not isinstance(value, UploadFile):
            continue
        filename = (value.filename or "").rsplit("/", 1)[-1]
        if filename.endswith(PICKLE_SUFFIXES):
            raise ApiError(
                422,
                f"{filename} is a pickle file and is not accepted (it is never opened); "
                f"save the adapter with safe_serialization=True to get {ADAPTER_WEIGHTS}",
                code="invalid_adapter",
            )
        role = _ROLES.get(filename) or _ROLES.get(f"{field_name}{_suffix(field_name)}")
        if role is None:
            continue
        # One byte past the cap tells "too large" without reading it all.
        data = await value.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ApiError(
                413,
                f"{filename or field_name} is over the {max_bytes} byte limit",
                code="too_large",
            )
        found[role] = data
    missing = [name for name, role in _ROLES.items() if role != "gate" and role not in found]
    if missing:
        raise ApiError(
            422,
            f"the upload needs {' and '.join(missing)} (as files of those names)",
            code="invalid_adapter",
        )
    return UploadedAdapter(
        config_json=found["config"], weights=found["weights"], gate=found.get("gate")
    )


def _suffix(field_name: str) -> str:
    return ".json" if field_name == "adapter_config" else ".safetensors"
