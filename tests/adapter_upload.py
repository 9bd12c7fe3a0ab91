"""A user's adapter uploaded and promoted over HTTP, and a chat with and without it:
what the HTTP and Ray Serve end-to-end tests both check."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx

from adapters.base_shapes import BaseModelShapes
from adapters.peft_interop import ADAPTER_CONFIG, ADAPTER_WEIGHTS, export_peft_dir
from tests.adapter_factory import random_lora
from tests.server import prepared_model_store


def upload_and_promote(
    url: str, admin: dict[str, str], *, user_id: str, base_model: str, folder: Path
) -> dict[str, Any]:
    """A random rank-8 LoRA for ``user_id`` as PEFT files, uploaded and promoted;
    returns the uploaded version."""
    shapes = BaseModelShapes.from_model_dir(prepared_model_store() / base_model)
    export_peft_dir(
        random_lora(shapes, base_model_id=base_model, rank=8, scale=0.08, seed=5), folder
    )
    files = [
        ("file", (name, io.BytesIO((folder / name).read_bytes())))
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
    ]
    version: dict[str, Any] = httpx.post(
        f"{url}/admin/adapters",
        data={"user_id": user_id, "base_model": base_model},
        files=files,
        headers=admin,
    ).json()
    promoted = httpx.post(f"{url}/admin/adapters/{version['id']}/promote", headers=admin)
    assert promoted.status_code == 200, promoted.text
    return version


def chat_personal_and_plain(
    url: str, user_key: str, model: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The same greedy question with the user's experts and with ``personalize: false``."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 16,
        "temperature": 0,
    }
    headers = {"Authorization": f"Bearer {user_key}"}
    answers = [
        httpx.post(f"{url}/v1/chat/completions", json=b, headers=headers, timeout=60).json()
        for b in (body, {**body, "personalize": False})
    ]
    return answers[0], answers[1]
