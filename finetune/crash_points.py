"""Named places where a test may kill its own worker process, to prove recovery.

``TAILOR_TEST_CRASH_AT=<name>`` makes the worker SIGKILL itself on reaching
that point: no cleanup, no ``finally``, exactly what a power cut or the OOM
killer does. Unset (always, outside tests), a crash point does nothing.
"""

from __future__ import annotations

import os
import signal

ENV_VARIABLE = "TAILOR_TEST_CRASH_AT"

# The version's weights are in the blob store; its row is not committed yet.
WEIGHTS_WRITTEN = "weights_written"


def crash_point(name: str) -> None:
    if os.environ.get(ENV_VARIABLE) == name:
        os.kill(os.getpid(), signal.SIGKILL)
