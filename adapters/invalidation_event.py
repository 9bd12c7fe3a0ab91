"""The event that tells every replica an expert's active version changed.

The catalog (``adapters.registry``) publishes it on ``INVALIDATION_CHANNEL`` after a
promotion, rollback or retirement commits; each replica's listener
(``adapters.invalidation``) decodes it and hands it to the replica's caches, among
them the device-side slot cache (``adapters.device.slot_cache``). It lives in this
small module of its own, apart from the registry, so that the device side can name it
without importing the catalog and its SQL.

Invariant: SQL-free; the wire form is the JSON object ``{"adapter_id": ...,
"active_version_id": ...}`` (``null`` when the expert has no active version left).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

INVALIDATION_CHANNEL = "adapters.invalidate"


@dataclass(frozen=True)
class InvalidationEvent:
    """An expert's active version changed: replicas drop what they hold for it."""

    adapter_id: str
    active_version_id: str | None

    def to_bytes(self) -> bytes:
        return json.dumps(
            {"adapter_id": self.adapter_id, "active_version_id": self.active_version_id}
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> InvalidationEvent:
        body = json.loads(data)
        return cls(adapter_id=str(body["adapter_id"]), active_version_id=body["active_version_id"])
