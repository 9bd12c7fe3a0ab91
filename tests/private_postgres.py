"""A PostgreSQL server of the test's own, to stop and start at will.

Outage tests must never stop the machine's shared server (other tests and
other people use it), so they run ``initdb`` into a temporary directory and
drive that cluster with ``pg_ctl``. The server listens on 127.0.0.1 at a free
port with trust authentication; its socket lives in its own directory.

PostgreSQL refuses to run as root, so under root the cluster belongs to the
``postgres`` account and every command runs through ``runuser``. The binaries
come from ``TAILOR_TEST_PG_BIN`` or the newest ``/usr/lib/postgresql/*/bin``;
when none is found the test fails (it is never skipped), as with the shared
backends of ``tests/backends.py``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.server import free_port

# The password is ignored by trust authentication; a URL that carries one lets
# tests check that it never leaks into a response or a log line.
PASSWORD = "private-pg-secret-7f3a"

_START_TIMEOUT_SECONDS = 60


def _bin_dir() -> Path:
    configured = os.environ.get("TAILOR_TEST_PG_BIN")
    if configured:
        return Path(configured)
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not candidates:
        raise RuntimeError(
            "no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql; "
            "set TAILOR_TEST_PG_BIN"
        )
    return candidates[-1]


@dataclass
class PrivatePostgres:
    """One private cluster; ``stop()`` and ``start()`` may be called any number of times."""

    bin_dir: Path
    root: Path
    port: int
    run_as: str | None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            str(_START_TIMEOUT_SECONDS),
            "start",
        )

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server; ``immediate`` is a crash as far as clients can tell."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def is_running(self) -> bool:
        status = self._run("pg_ctl", "-D", str(self.data_dir), "status", check=False)
        return status.returncode == 0

    def _run(
        self, program: str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / program), *args]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        return result


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A fresh, running cluster; stopped and deleted afterwards."""
    run_as = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="tailor-pg-"))
    try:
        if run_as is not None:
            account = pwd.getpwnam(run_as)
            os.chown(root, account.pw_uid, account.pw_gid)
        server = PrivatePostgres(bin_dir=_bin_dir(), root=root, port=free_port(), run_as=run_as)
        server._run(
            "initdb",
            "-D",
            str(server.data_dir),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        )
        server.start()
        try:
            yield server
        finally:
            if server.is_running():
                server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
