"""A quiet terminal for ``--quiet`` commands: Tailor's own lines on the screen, the rest in a log.

A first ``make run`` loads torch, transformers, onnx and friends, which print
warnings, progress bars and C++ log lines of their own, to Python's streams or
straight to file descriptors 1 and 2. In quiet mode the process's descriptors
1 and 2 (and ``sys.stdout`` / ``sys.stderr``) point at a log file, so all of
that lands there whatever wrote it; ``say`` and the progress bars write to a
copy of the original terminal taken before the switch. Tailor's own warnings
and every error logged still reach the terminal, so a failure is never only in the log.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from models.store.progress import PreparationStep

_BAR_WIDTH = 24

_OWN_PACKAGES = frozenset({"serving", "router", "finetune", "adapters", "storage"})


def _worth_the_terminal(record: logging.LogRecord) -> bool:
    # Libraries warn about much that a user cannot act on (optional kernels,
    # deprecations); their errors, and Tailor's own warnings, still show.
    if record.levelno >= logging.ERROR:
        return True
    return record.levelno >= logging.WARNING and record.name.split(".")[0] in _OWN_PACKAGES


class Console:
    """Where a command's own lines go: the terminal, whatever the process's stdout is."""

    def __init__(self, terminal: TextIO, *, log_path: Path | None = None) -> None:
        self._terminal = terminal
        self.log_path = log_path
        """Where everything else goes, when it does not go to the terminal."""
        self._interactive = terminal.isatty()
        self._bar_open = False

    def say(self, line: str) -> None:
        self._end_bar()
        self._terminal.write(f"{line}\n")
        self._terminal.flush()

    def step(self, step: PreparationStep) -> None:
        """One bar per item, redrawn in place on a terminal, one line per step elsewhere."""
        filled = _BAR_WIDTH * step.done // step.total
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        line = f"tailor:   {step.item:<30} [{bar}] {step.message}"
        if not self._interactive:
            self.say(line)
            return
        # \x1b[K clears what a longer previous message left on the line.
        self._terminal.write(f"\r{line}\x1b[K")
        self._bar_open = True
        if step.finished:
            self._end_bar()
        self._terminal.flush()

    def _end_bar(self) -> None:
        if self._bar_open:
            self._terminal.write("\n")
            self._bar_open = False


def loud_console() -> Console:
    return Console(sys.stdout)


@contextmanager
def quiet_console(log_path: Path) -> Iterator[Console]:
    """Send everything but the console's own lines (and warnings) to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
    log = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    old_streams = sys.stdout, sys.stderr
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    warnings_to_terminal = logging.StreamHandler(terminal)
    warnings_to_terminal.addFilter(_worth_the_terminal)
    warnings_to_terminal.setFormatter(
        logging.Formatter("tailor: %(levelname)s %(name)s: %(message)s")
    )
    logging.getLogger().addHandler(warnings_to_terminal)
    try:
        yield Console(terminal, log_path=log_path)
    finally:
        logging.getLogger().removeHandler(warnings_to_terminal)
        sys.stdout, sys.stderr = old_streams
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        log.close()
        terminal.close()
