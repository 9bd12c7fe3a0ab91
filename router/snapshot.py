"""The router's learnt state on disk, so that a restart replays only what came after it.

Feedback in SQL stays the source of truth: a snapshot is a cache of "the state after
feedback id N". It is one ``.npz`` of plain arrays (read with ``allow_pickle=False``: never
unpickled) plus a JSON header naming what it is valid for: the format version, the models,
the embedding size, the router's configuration and the latest routing-influence reset. A
snapshot that is missing, unreadable or made for anything else is ignored with a warning, and
the router replays everything (router/state_sync.py), so a bad file costs time, never
correctness.

Written to a temporary file and renamed, so a crash mid-write leaves the previous snapshot.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from router.eagle_router import EagleRouter

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: user influence keeps weights and trust
_HEADER = "header_json"


def fingerprint(router: EagleRouter, reset_epoch: str | None) -> dict[str, Any]:
    """What a snapshot must match to be used by ``router``."""
    return {
        "format_version": FORMAT_VERSION,
        "models": router.models,
        "dimensions": router.embedder.dimensions,
        "embedder": getattr(router.embedder, "name", ""),
        "config": repr(router.config),
        "reset_epoch": reset_epoch,
    }


def save_snapshot(router: EagleRouter, path: Path, *, reset_epoch: str | None) -> int:
    """Write the router's state; returns the feedback id it holds up to."""
    arrays, last_feedback_id = router.export_state()
    header = fingerprint(router, reset_epoch) | {"last_feedback_id": last_feedback_id}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    payload: dict[str, Any] = {**arrays, _HEADER: np.array(json.dumps(header))}
    with partial.open("wb") as handle:
        np.savez(handle, allow_pickle=False, **payload)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)
    return last_feedback_id


def load_snapshot(router: EagleRouter, path: Path, *, reset_epoch: str | None) -> bool:
    """Restore ``router`` (a fresh one) from ``path``; False (with a warning) when the file
    is missing, corrupt or made for another configuration."""
    if not path.is_file():
        logger.info("router: no snapshot at %s; replaying all feedback", path)
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data[_HEADER]))
            expected = fingerprint(router, reset_epoch)
            stale = {k for k, v in expected.items() if header.get(k) != v}
            if stale:
                logger.warning(
                    "router: snapshot %s was made for another %s; replaying all feedback",
                    path,
                    ", ".join(sorted(stale)),
                )
                return False
            arrays = {name: data[name] for name in data.files if name != _HEADER}
        router.import_state(arrays, int(header["last_feedback_id"]))
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        logger.warning("router: snapshot %s is unreadable (%s); replaying all feedback", path, exc)
        return False
    return True
