"""Saturation load test: a real ``tailor serve`` under a realistic mix of
requests, at and beyond the concurrency it can serve, with faults injected.

    python -m benchmarks.load_test [--concurrency 1,8,32,64] [--duration 20]
        [--max-tokens 8] [--fault-every 10] [--users 16]
        [--model smollm2-135m-instruct] [--database sqlite|postgresql]
        [--server-env TAILOR_X=VALUE ...] [--json OUT] [--server-log PATH]

One server (embedded SQLite by default, in-process cache, the prepared model
store) serves every level in turn. At each level ``concurrency`` clients loop for
``duration`` seconds, each as one of ``users`` users, drawing from the mix:
chat (plain and streamed, small ``max_tokens``), text completions, feedback
on an earlier answer, example uploads and listings. Every ``fault-every``-th
request is replaced by a deliberately bad one (a seed out of range, a NUL in
a message, a body that is not UTF-8, an unterminated JSON body); those must
get a 4xx and must not disturb the others.

What counts as a failure: a 5xx other than 503, a transport error or
timeout, a 4xx on a well-formed request, or a deliberately bad request that
gets neither a 4xx nor 429/503. 429 and 503 are the server saying "not now"
and are counted apart. The server's output goes to ``--server-log``; its
ERROR records are summarised at the end. Latencies are client-side, to the
end of the answer (the end of the stream for streamed chat).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import secrets
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.prompts import PROMPTS
from tests.backends import postgres_schema
from tests.server import running_server, served_env

# The share of each kind of well-formed request in the mix.
MIX = {
    "chat": 30,
    "chat-stream": 20,
    "completion": 15,
    "feedback": 10,
    "examples-upload": 10,
    "listing": 15,
}
REQUEST_TIMEOUT_S = 120.0


@dataclass
class Result:
    kind: str
    status: int | None  # None: a transport error or timeout
    seconds: float
    fault: bool
    error: str = ""

    @property
    def failed(self) -> bool:
        if self.status is None:
            return True
        if self.status in (429, 503):
            # Backpressure, even for a bad request: refused before its body was read.
            return False
        if self.fault:
            return not 400 <= self.status < 500
        return self.status >= 400


@dataclass
class Level:
    concurrency: int
    seconds: float = 0.0
    results: list[Result] = field(default_factory=list)


@dataclass
class Client:
    """One simulated client: a user's key and the answers it may rate."""

    http: httpx.AsyncClient
    key: str
    model: str
    max_tokens: int
    rng: random.Random
    answered: list[str] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def chat_body(self, **extra: Any) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": self.rng.choice(PROMPTS)}],
            "max_tokens": self.max_tokens,
            **extra,
        }

    async def chat(self) -> int:
        response = await self.http.post(
            "/v1/chat/completions", json=self.chat_body(), headers=self.headers
        )
        if response.status_code == 200:
            self.answered.append(response.json()["id"])
        return response.status_code

    async def chat_stream(self) -> int:
        async with self.http.stream(
            "POST", "/v1/chat/completions", json=self.chat_body(stream=True), headers=self.headers
        ) as response:
            async for _ in response.aiter_bytes():
                pass
            return response.status_code

    async def completion(self) -> int:
        body = {
            "model": self.model,
            "prompt": self.rng.choice(PROMPTS),
            "max_tokens": self.max_tokens,
        }
        response = await self.http.post("/v1/completions", json=body, headers=self.headers)
        return response.status_code

    async def feedback(self) -> int:
        if not self.answered:
            return await self.listing()
        body = {"response_id": self.rng.choice(self.answered), "rating": self.rng.choice([-1, 1])}
        response = await self.http.post("/v1/feedback", json=body, headers=self.headers)
        return response.status_code

    async def examples_upload(self) -> int:
        examples = [
            {
                "messages": [
                    {"role": "user", "content": self.rng.choice(PROMPTS)},
                    {"role": "assistant", "content": f"an answer {self.rng.random():.6f}"},
                ]
            }
            for _ in range(self.rng.randint(1, 5))
        ]
        response = await self.http.post(
            "/v1/examples", json={"examples": examples}, headers=self.headers
        )
        return response.status_code

    async def listing(self) -> int:
        path = self.rng.choice(
            ["/v1/models", "/v1/examples?limit=20", "/v1/fine-tunes", "/v1/adapters"]
        )
        response = await self.http.get(path, headers=self.headers)
        return response.status_code

    # Deliberately bad requests: each must get a 4xx.

    async def fault_bad_seed(self) -> int:
        # Past what any seed can be (the engine's generators take 64 bits).
        body = self.chat_body(seed=self.rng.choice([2**64, 2**70, -(2**64)]))
        response = await self.http.post("/v1/chat/completions", json=body, headers=self.headers)
        return response.status_code

    async def fault_nul_message(self) -> int:
        body = self.chat_body()
        body["messages"][0]["content"] = "before\x00after"
        response = await self.http.post("/v1/chat/completions", json=body, headers=self.headers)
        return response.status_code

    async def fault_not_utf8(self) -> int:
        response = await self.http.post(
            "/v1/examples",
            content=b'{"examples": [\xff\xfe\x00]}',
            headers={**self.headers, "Content-Type": "application/json"},
        )
        return response.status_code

    async def fault_truncated_json(self) -> int:
        response = await self.http.post(
            "/v1/chat/completions",
            content=b'{"model": "auto", "messages": [{"role": "user", "con',
            headers={**self.headers, "Content-Type": "application/json"},
        )
        return response.status_code


KINDS: dict[str, Callable[[Client], Awaitable[int]]] = {
    "chat": Client.chat,
    "chat-stream": Client.chat_stream,
    "completion": Client.completion,
    "feedback": Client.feedback,
    "examples-upload": Client.examples_upload,
    "listing": Client.listing,
}
FAULTS: dict[str, Callable[[Client], Awaitable[int]]] = {
    "fault:bad-seed": Client.fault_bad_seed,
    "fault:nul-message": Client.fault_nul_message,
    "fault:not-utf8": Client.fault_not_utf8,
    "fault:truncated-json": Client.fault_truncated_json,
}


async def timed(kind: str, fault: bool, call: Awaitable[int]) -> Result:
    started = time.perf_counter()
    try:
        status = await call
    except httpx.HTTPError as exc:
        return Result(kind, None, time.perf_counter() - started, fault, type(exc).__name__)
    return Result(kind, status, time.perf_counter() - started, fault)


async def run_level(
    url: str,
    keys: list[str],
    *,
    concurrency: int,
    duration: float,
    model: str,
    max_tokens: int,
    fault_every: int,
    seed: int,
) -> Level:
    level = Level(concurrency)
    counter = itertools.count(1)
    kinds, weights = list(MIX), list(MIX.values())
    fault_cycle = itertools.cycle(FAULTS)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as http:
        deadline = time.perf_counter() + duration

        async def worker(index: int) -> None:
            rng = random.Random(seed * 1000 + index)
            client = Client(http, keys[index % len(keys)], model, max_tokens, rng)
            while time.perf_counter() < deadline:
                number = next(counter)
                if fault_every and number % fault_every == 0:
                    kind = next(fault_cycle)
                    level.results.append(await timed(kind, True, FAULTS[kind](client)))
                else:
                    kind = rng.choices(kinds, weights)[0]
                    level.results.append(await timed(kind, False, KINDS[kind](client)))

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        level.seconds = time.perf_counter() - started
    return level


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def status_class(status: int | None) -> str:
    if status is None:
        return "transport"
    if status in (429, 503):
        return str(status)
    return f"{status // 100}xx"


def summary(level: Level) -> dict[str, Any]:
    by_kind: dict[str, list[Result]] = defaultdict(list)
    for result in level.results:
        by_kind[result.kind].append(result)
    statuses = Counter(status_class(r.status) for r in level.results)
    failures = [r for r in level.results if r.failed]
    return {
        "concurrency": level.concurrency,
        "seconds": round(level.seconds, 2),
        "requests": len(level.results),
        "throughput_rps": round(len(level.results) / level.seconds, 2) if level.seconds else 0.0,
        "statuses": dict(sorted(statuses.items())),
        "failures": len(failures),
        "failure_examples": sorted(
            Counter(f"{r.kind} -> {r.status or r.error}" for r in failures).items()
        ),
        "kinds": {
            kind: {
                "requests": len(results),
                "p50_ms": round(1000 * percentile([r.seconds for r in results], 50), 1),
                "p99_ms": round(1000 * percentile([r.seconds for r in results], 99), 1),
                "statuses": dict(sorted(Counter(status_class(r.status) for r in results).items())),
            }
            for kind, results in sorted(by_kind.items())
        },
    }


def print_table(summaries: list[dict[str, Any]]) -> None:
    header = f"{'conc':>4} {'kind':<22} {'reqs':>6} {'p50 ms':>9} {'p99 ms':>9}  statuses"
    print(header)
    print("-" * len(header))
    for s in summaries:
        for kind, k in s["kinds"].items():
            statuses = " ".join(f"{name}:{count}" for name, count in k["statuses"].items())
            print(
                f"{s['concurrency']:>4} {kind:<22} {k['requests']:>6} "
                f"{k['p50_ms']:>9.1f} {k['p99_ms']:>9.1f}  {statuses}"
            )
        statuses = " ".join(f"{name}:{count}" for name, count in s["statuses"].items())
        print(
            f"{s['concurrency']:>4} {'ALL':<22} {s['requests']:>6} "
            f"{s['throughput_rps']:>7.1f}/s {'':>9}  {statuses}  failures:{s['failures']}"
        )
        for example, count in s["failure_examples"]:
            print(f"{'':>4}   failure: {example} x{count}")
        print()


def create_users(url: str, admin_key: str, count: int) -> list[str]:
    admin = {"Authorization": f"Bearer {admin_key}"}
    keys = []
    for number in range(count):
        response = httpx.post(
            f"{url}/admin/users", json={"name": f"load-{number}"}, headers=admin, timeout=30
        )
        response.raise_for_status()
        keys.append(response.json()["api_key"])
    return keys


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        if not separator or not name.startswith("TAILOR_"):
            raise SystemExit(f"--server-env takes TAILOR_NAME=VALUE, not {pair!r}")
        env[name] = value
    return env


def server_errors(log: Path) -> Counter[str]:
    """The server log's ERROR records and tracebacks, counted by message."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    errors: Counter[str] = Counter()
    for line in lines:
        if " ERROR " in line:
            # Without the timestamp, so that one cause is one entry.
            errors[line.split(" ERROR ", 1)[1][:200]] += 1
        elif line.startswith("Traceback"):
            errors["Traceback"] += 1
    return errors


@contextmanager
def database_url(kind: str) -> Iterator[str | None]:
    """None: the server's embedded SQLite; else a fresh schema, dropped after."""
    if kind == "sqlite":
        yield None
    else:
        with postgres_schema() as url:
            yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,8,32,64", help="levels, comma-separated")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per level")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--fault-every", type=int, default=10, help="0: no faults")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-env", action="append", default=[], metavar="TAILOR_X=V")
    parser.add_argument(
        "--database",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help="embedded SQLite, or a private schema of the test PostgreSQL",
    )
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument(
        "--server-log",
        type=Path,
        default=Path("var/log/load-test-server.log"),
        help="server output",
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]

    admin_key = "admin-" + secrets.token_hex(8)
    with tempfile.TemporaryDirectory() as data_dir, database_url(args.database) as url:
        env = served_env(
            Path(data_dir),
            admin_key,
            TAILOR_MODELS=json.dumps([args.model]),
            **({"TAILOR_DATABASE_URL": url} if url else {}),
            **parse_env(args.server_env),
        )
        args.server_log.parent.mkdir(parents=True, exist_ok=True)
        with running_server(env, timeout=300, log_path=args.server_log) as server:
            print(f"server ready in {server.startup_seconds:.1f} s at {server.url}")
            keys = create_users(server.url, admin_key, args.users)
            summaries = []
            for concurrency in levels:
                level = asyncio.run(
                    run_level(
                        server.url,
                        keys,
                        concurrency=concurrency,
                        duration=args.duration,
                        model=args.model,
                        max_tokens=args.max_tokens,
                        fault_every=args.fault_every,
                        seed=args.seed,
                    )
                )
                summaries.append(summary(level))
                print(f"concurrency {concurrency}: {len(level.results)} requests", flush=True)
            alive = server.process.poll() is None
    print()
    print_table(summaries)
    errors = server_errors(args.server_log)
    print(f"server still running at the end: {alive}")
    print(f"server log: {args.server_log} ({sum(errors.values())} error records)")
    for message, count in errors.most_common(10):
        print(f"  {count} x {message}")
    if args.json:
        figures = {"levels": summaries, "server_alive": alive, "server_errors": dict(errors)}
        args.json.write_text(json.dumps(figures, indent=2))
    # Logged errors are shown, not judged: a 503's cause is logged too.
    if not alive or any(s["failures"] for s in summaries):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
