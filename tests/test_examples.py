"""``examples/personalise.py`` run as a user runs it, against a real ``tailor serve``
with its fine-tune worker: every step it prints is checked against the server's state."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.server import (
    CPU_WORKER_SETTINGS,
    REPO_ROOT,
    running_server,
    served_env,
    tailor_env,
)

SCRIPT = REPO_ROOT / "examples" / "personalise.py"
EXAMPLES = REPO_ROOT / "examples" / "pirate_examples.jsonl"
ADMIN_KEY = "admin-" + secrets.token_hex(8)
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.mark.e2e
@pytest.mark.slow
def test_personalise_script_runs_the_whole_loop(tmp_path: Path) -> None:
    # The server's default batch size, as `make run` has it: the script must
    # work for a user who changed nothing.
    # The gate as `make run` has it, factual probes included: these examples keep their
    # facts (unlike the unit tests' template answers), and a script for new users must
    # show what the service really decides.
    env = served_env(
        tmp_path / "data",
        ADMIN_KEY,
        **(CPU_WORKER_SETTINGS | {"TAILOR_FINETUNE_FACTUAL_PROBES": "30"}),
    )
    admin_key_file = tmp_path / "admin-key"
    admin_key_file.write_text(ADMIN_KEY + "\n")
    with running_server(env, timeout=120) as server:
        started = time.perf_counter()
        run = subprocess.run(
            [
                sys.executable,
                str(SCRIPT),
                f"--url={server.url}",
                f"--admin-key-file={admin_key_file}",
                "--name=captain",
                # The admin's per-user trade-off, as the README shows it.
                "--max-probe-loss=0.2",
            ],
            # No TAILOR_* variable: the key must come from the file.
            env=tailor_env({}),
            capture_output=True,
            text=True,
            timeout=900,
        )
        seconds = time.perf_counter() - started
        output = run.stdout
        assert run.returncode == 0, f"{output}\n{run.stderr}"
        print(f"personalise.py took {seconds:.0f} s:\n{output}")

        [user] = [
            u
            for u in httpx.get(f"{server.url}/admin/users", headers=ADMIN).json()["data"]
            if u["name"] == "captain"
        ]
        assert f"1. user {user['id']} (captain)" in output
        # The script set this user's probe allowance, and the job was judged by it.
        assert "may forget 20% of the factual probes" in output
        detail = httpx.get(f"{server.url}/admin/users/{user['id']}", headers=ADMIN).json()
        assert detail["example_count"] == len(EXAMPLES.read_text().splitlines())

        [job] = httpx.get(
            f"{server.url}/admin/jobs", params={"user_id": user["id"]}, headers=ADMIN
        ).json()["data"]
        assert job["status"] == "succeeded", job
        events = httpx.get(f"{server.url}/admin/jobs/{job['id']}/events", headers=ADMIN).json()
        kinds = [e["kind"] for e in events["data"]]
        # Every event was printed, one line each, in order.
        printed = re.findall(r"^  (\w+) ", output, flags=re.MULTILINE)
        assert printed == kinds
        [evaluation] = [e["payload"] for e in events["data"] if e["kind"] == "evaluation"]
        assert evaluation["limits"]["max_probe_loss"] == 0.2
        assert "this user's own limit" in evaluation["limits"]["max_probe_loss_set_by"]

        # Python's repr quotes with ' or, when the text holds one, with ".
        base_answer = re.search(r"base model: +(['\"])(.*)\1$", output, flags=re.MULTILINE)
        expert_answer = re.search(r"with your experts: +(['\"])(.*)\1$", output, re.MULTILINE)
        assert base_answer and expert_answer, output
        if "promoted" in kinds:
            # The new specialist answered, in the voice of its examples.
            assert f"adapters that answered: specialist {job['adapter_id']} v1" in output
            assert expert_answer[2] != base_answer[2]
            # Every example opens with "Arr, matey!" and ends "Yo ho ho!": any of it counts.
            assert any(word in expert_answer[2].lower() for word in ("arr", "matey", "yo ho"))
        else:
            assert "not_promoted" in kinds and "was held back" in output
            assert f"POST /v1/adapters/{job['result_version_id']}/promote" in output
            # What the user decides on: the gate's sample answers, base beside candidate.
            assert "held-out question" in output and "candidate:" in output

        feedback = re.search(r"^5\. feedback \d+ stored: rating 1 on (\S+)$", output, re.MULTILINE)
        assert feedback, output
        detail = httpx.get(f"{server.url}/admin/users/{user['id']}", headers=ADMIN).json()
        assert detail["feedback_count"] == 1
