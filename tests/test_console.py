"""The quiet console: Tailor's own lines reach the terminal, library output the log."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from models.store.progress import PreparationStep
from serving.console import Console, quiet_console


def test_everything_but_own_lines_and_warnings_goes_to_the_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log" / "tailor.log"
    with quiet_console(log) as console:
        os.write(1, b"C++ noise on fd 1\n")
        os.write(2, b"C++ noise on fd 2\n")
        print("a library's print")
        sys.stderr.write("a progress bar\n")
        logging.getLogger("transformers.kernels").warning("an optional kernel is missing")
        logging.getLogger("serving.runtime").warning("one of ours")
        logging.getLogger("some_library").error("an error from a library")
        console.say("tailor: ready")
    os.write(1, b"after the console\n")
    terminal = capfd.readouterr().out
    logged = log.read_text()
    for noise in ("C++ noise on fd 1", "C++ noise on fd 2", "a library's print", "a progress bar"):
        assert noise in logged and noise not in terminal
    assert "an optional kernel is missing" not in terminal
    assert "one of ours" in terminal and "an error from a library" in terminal
    assert "tailor: ready" in terminal and "tailor: ready" not in logged
    # The descriptors are the process's own again.
    assert "after the console" in terminal and "after the console" not in logged


def test_a_progress_bar_fills_with_its_steps(capsys: pytest.CaptureFixture[str]) -> None:
    console = Console(sys.stdout)  # not a terminal here: one line per step
    console.step(PreparationStep("gemma-3-270m", 0, 5, "locating GGUF..."))
    console.step(PreparationStep("gemma-3-270m", 5, 5, "ready"))
    first, last = capsys.readouterr().out.splitlines()
    assert "[" + "-" * 24 + "] locating GGUF..." in first
    assert "[" + "#" * 24 + "] ready" in last


def test_a_step_outside_its_range_is_refused() -> None:
    with pytest.raises(ValueError):
        PreparationStep("x", 6, 5, "too far")
