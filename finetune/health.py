"""A fine-tune worker's liveness signal: a file whose age says when it last moved.

A worker serves no HTTP, and a Kubernetes probe must not reach into the
database (a database outage is not cured by restarting workers). So the
worker touches a file every time its loop polls and every time it renews a
job's lease, and ``tailor worker --check-health`` compares the file's age with
a limit. A worker stuck in a hung call stops touching it and is restarted;
its job goes back to the queue when the lease runs out, as after a crash.

Only the standard library here: the probe runs this every few seconds and
must not import torch.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


class Heartbeat:
    """Touches ``path`` (creating it and its directory) on every ``beat``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._failing = False

    def beat(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # On an existing file, touch sets its times to now (os.utime).
            self.path.touch()
            self._failing = False
        except OSError:
            # The probe will report the stale file; logging every beat would
            # only flood the log with the same error.
            if not self._failing:
                log.exception("cannot touch the heartbeat file %s", self.path)
            self._failing = True


def heartbeat_age(path: Path, *, now: float | None = None) -> float | None:
    """Seconds since the file was last touched; None when there is no file."""
    try:
        modified = path.stat().st_mtime
    except (FileNotFoundError, NotADirectoryError):
        return None
    return max(0.0, (time.time() if now is None else now) - modified)


def heartbeat_problem(
    path: Path, max_age_seconds: float, *, now: float | None = None
) -> str | None:
    """Why the worker does not look alive, or None when it does."""
    try:
        age = heartbeat_age(path, now=now)
    except OSError as error:
        return f"cannot read the heartbeat at {path}: {error}"
    if age is None:
        return f"no heartbeat at {path}: the worker has not started polling"
    if age > max_age_seconds:
        return f"the last heartbeat is {age:.0f} s old (limit {max_age_seconds:g} s)"
    return None
