"""Generated requests against every operation of Tailor's OpenAPI schema.

Schemathesis generates the requests: its coverage cases (boundary and
just-out-of-bounds values) and then Hypothesis-driven ones, valid and
schema-breaking, with a fixed budget and a derandomized seed,
and the app answers in process with real models, a real database and a real
cache. Every answer with a status of 500 or more, and every exception that
escapes the app, is a finding; findings are grouped by root cause (the
server-side exception, or the error message when the server handled it), and
the shortest reproduction of each group is kept.

Invariants:
- every operation of the schema is fuzzed (``fuzz_all`` raises if one has no
  budget), so an operation is never left out silently;
- the run is repeatable: coverage cases are deterministic, ``derandomize``
  fixes Hypothesis's seed and no example database is read or written;
- the app's lifespan is started by schemathesis's ASGI transport (it owns the
  event loop the requests run on) and is shut down by ``fuzz_target``.
"""

from __future__ import annotations

import copy
import json
import logging
import secrets
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.generation.drivers import CoverageGenerator
from schemathesis.generation.feedback import NO_FEEDBACK
from schemathesis.generation.overrides import Override
from schemathesis.python import asgi

from adapters.base_shapes import BaseModelShapes
from adapters.peft_interop import ADAPTER_CONFIG, ADAPTER_WEIGHTS, export_peft_dir
from models.catalog import register_prepared_models
from models.store import load_prepared
from serving.app import create_app
from serving.runtime import ModelRuntime
from serving.services import Services
from serving.settings import load_settings
from tests.adapter_factory import random_lora
from tests.backends import REDIS_URL, deployment_database_url
from tests.server import REPO_ROOT, prepared_model_store

# The smallest chat model keeps generation cheap on CPU; MiniLM (the router's
# embedder) comes from the same store.
FUZZ_MODEL = "smollm2-135m-instruct"
# A private Redis database, so the run never touches the shared db 0.
FUZZ_REDIS_DB = 11
DEPLOYMENTS = ["sqlite+memory", "postgresql+redis"]
# Far above the slowest answer the fuzz settings allow (a few dozen tokens on a
# busy CPU), so a request that runs into it is stuck, not slow.
REQUEST_TIMEOUT_S = 120

# Settings that bound the work one generated request can ask for: a short
# context caps any generation at a few dozen tokens, and the rate limit is
# lifted so that the budget is spent on inputs, not on 429s.
FUZZ_ENGINE: dict[str, object] = {
    "models": [FUZZ_MODEL],
    "max_context_tokens": 64,
    "adapter_slots": 4,
}
FUZZ_SERVER: dict[str, object] = {
    "rate_limit_requests_per_minute": 1_000_000.0,
    "rate_limit_burst": 1_000_000.0,
}


@dataclass(frozen=True)
class Finding:
    operation: str
    status: int | None
    cause: str
    # The exception's type and message, or the answer's body (cut short).
    message: str
    # Which bearer the request carried: the curl command hides it.
    key: str
    curl: str
    detail: str


@dataclass
class FindingGroup:
    """One root cause: the shortest reproduction and how often it was hit."""

    shortest: Finding
    count: int = 1

    def add(self, finding: Finding) -> None:
        self.count += 1
        if len(finding.curl) < len(self.shortest.curl):
            self.shortest = finding


@dataclass
class FuzzReport:
    groups: dict[tuple[str, int | None, str], FindingGroup] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    # Statuses answered per operation (None: an exception escaped the app).
    statuses: dict[str, Counter[int | None]] = field(default_factory=dict)


@dataclass
class FuzzTarget:
    schema: Any
    session: asgi.ASGIClient
    user_key: str
    admin_key: str
    # Ids of rows that exist (and the served model's names), substituted for
    # generated path and query parameters and top-level body fields of the
    # same names in a share of the cases, so that the handlers behind a
    # lookup are reached.
    known_ids: dict[str, list[str]] = field(default_factory=dict)


class _ErrorLog(logging.Handler):
    """The server's logged exceptions, read after each request."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> list[logging.LogRecord]:
        records, self.records = self.records, []
        return records


def _redis_url(db: int) -> str:
    base = REDIS_URL.rsplit("/", 1)[0] if REDIS_URL.count("/") > 2 else REDIS_URL
    return f"{base}/{db}"


def _with_hand_read_bodies(spec: dict[str, Any]) -> dict[str, Any]:
    """The schema plus the request bodies of the three routes that read their
    body by hand (so FastAPI cannot describe it): without them schemathesis
    would only ever send those routes an empty body."""
    spec = copy.deepcopy(spec)
    message = {
        "type": "object",
        "properties": {"role": {"type": "string"}, "content": {"type": "string"}},
        "required": ["role", "content"],
    }
    spec["paths"]["/v1/examples"]["post"]["requestBody"] = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "examples": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {"messages": {"type": "array", "items": message}},
                                "required": ["messages"],
                            },
                        }
                    },
                    "required": ["examples"],
                }
            }
        },
    }
    spec["paths"]["/admin/adapters"]["post"]["requestBody"] = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "base_model": {"type": "string"},
                        "kind": {"type": "string"},
                        "user_id": {"type": "string"},
                        "name": {"type": "string"},
                        "adapter_config": {"type": "string", "format": "binary"},
                        "adapter_model": {"type": "string", "format": "binary"},
                    },
                    "required": ["base_model", "adapter_config", "adapter_model"],
                }
            }
        },
    }
    spec["paths"]["/v1/files"]["post"]["requestBody"] = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "purpose": {"type": "string"},
                        "file": {"type": "string", "format": "binary"},
                    },
                    "required": ["purpose", "file"],
                }
            }
        },
    }
    return spec


@contextmanager
def fuzz_target(deployment: str, tmp_path: Path) -> Iterator[FuzzTarget]:
    """The app with the real small model loaded, a user, and a few rows to aim at."""

    admin_key = "admin-" + secrets.token_hex(8)
    with deployment_database_url(deployment, tmp_path) as url:
        store = prepared_model_store()
        settings = load_settings(
            storage={
                "data_dir": tmp_path,
                "model_store": store,
                "database_url": url,
                "redis_url": (
                    _redis_url(FUZZ_REDIS_DB) if deployment == "postgresql+redis" else None
                ),
                "cache_prefix": f"tailor-fuzz-{secrets.token_hex(4)}:",
            },
            server={"admin_key": admin_key, **FUZZ_SERVER},
            engine=FUZZ_ENGINE,
            finetune={"workers": 0},
        )
        services = Services.open(settings)
        with services.database.session() as session:
            register_prepared_models(
                session,
                load_prepared(store),
                store_dir=settings.storage.model_store_dir,
                prices=settings.router.prices,
            )
        runtime = ModelRuntime(services)
        app = create_app(services, runtime=runtime)
        try:
            schema = schemathesis.openapi.from_dict(_with_hand_read_bodies(app.openapi()))
            # What `from_asgi` does after loading: requests go to the app in process.
            schema.app = app
            # Starts the app's lifespan (FastAPI's ASGI signature is a looser
            # spelling of the one schemathesis declares).
            with asgi.get_client(app) as session_client:  # type: ignore[arg-type]
                if not runtime.loaded.wait(timeout=300) or runtime.load_error:
                    raise RuntimeError(f"the models did not load: {runtime.load_error}")
                yield _seeded(schema, session_client, admin_key)
        finally:
            asgi.shutdown_lifespans()


def _seeded(schema: Any, client: asgi.ASGIClient, admin_key: str) -> FuzzTarget:
    """A user with a key, a spare key, a promoted adapter and a queued job."""
    admin = {"Authorization": f"Bearer {admin_key}"}

    def ok(response: requests.Response) -> Any:
        if response.status_code >= 300:
            raise RuntimeError(f"seeding failed: {response.status_code} {response.text}")
        return response.json()

    user = ok(client.post("/admin/users", json={"name": "fuzz"}, headers=admin))
    spare = ok(client.post(f"/admin/users/{user['id']}/keys", json={}, headers=admin))
    user_auth = {"Authorization": f"Bearer {user['api_key']}"}
    ok(
        client.post(
            "/v1/examples",
            json={
                "examples": [
                    {
                        "messages": [
                            {"role": "user", "content": f"question {i}"},
                            {"role": "assistant", "content": f"answer {i}"},
                        ]
                    }
                    for i in range(10)
                ]
            },
            headers=user_auth,
        )
    )
    job = ok(client.post("/v1/fine-tunes", json={"model": FUZZ_MODEL}, headers=user_auth))
    version = _uploaded_adapter(client, admin, user_id=user["id"])
    lines = "".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"q{i}"},
                    {"role": "assistant", "content": f"a{i}"},
                ]
            }
        )
        + "\n"
        for i in range(12)
    )
    training_file = ok(
        client.post(
            "/v1/files",
            data={"purpose": "fine-tune"},
            files=[("file", ("train.jsonl", lines.encode()))],
            headers=user_auth,
        )
    )
    openai_job = ok(
        client.post(
            "/v1/fine_tuning/jobs",
            json={"model": FUZZ_MODEL, "training_file": training_file["id"]},
            headers=user_auth,
        )
    )
    fine_tuned = f"ft:{FUZZ_MODEL}:tailor:{version['id']}"
    answers = [
        ok(
            client.post(
                "/v1/chat/completions",
                json={
                    "model": FUZZ_MODEL,
                    "messages": [{"role": "user", "content": "hello"}],
                    "max_tokens": 2,
                },
                headers=user_auth,
            )
        )["id"]
        for _ in range(2)
    ]
    return FuzzTarget(
        schema=schema,
        session=client,
        user_key=user["api_key"],
        admin_key=admin_key,
        known_ids={
            "user_id": [user["id"]],
            "key_id": [spare["id"]],
            "job_id": [job["id"], openai_job["id"]],
            "target_id": [version["id"], version["adapter_id"]],
            "model": [FUZZ_MODEL, "auto", fine_tuned],
            "model_id": [FUZZ_MODEL, fine_tuned],
            "file_id": [training_file["id"]],
            "training_file": [training_file["id"]],
            "validation_file": [training_file["id"]],
            "base_model": [FUZZ_MODEL],
            "response_id": answers,
            "preferred_over": answers[::-1],
        },
    )


def _uploaded_adapter(client: asgi.ASGIClient, admin: dict[str, str], *, user_id: str) -> Any:
    shapes = BaseModelShapes.from_model_dir(prepared_model_store() / FUZZ_MODEL)
    with tempfile.TemporaryDirectory() as folder:
        export_peft_dir(random_lora(shapes, base_model_id=FUZZ_MODEL, rank=4), Path(folder))
        files = [
            ("file", (name, (Path(folder) / name).read_bytes()))
            for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
        ]
        uploaded = client.post(
            "/admin/adapters",
            data={"user_id": user_id, "base_model": FUZZ_MODEL},
            files=files,
            headers=admin,
        )
    if uploaded.status_code != 201:
        raise RuntimeError(f"seeding the adapter failed: {uploaded.status_code} {uploaded.text}")
    version = uploaded.json()
    promoted = client.post(f"/admin/adapters/{version['id']}/promote", headers=admin)
    if promoted.status_code != 200:
        raise RuntimeError(f"promoting the adapter failed: {promoted.text}")
    return version


def _cause(records: list[logging.LogRecord], exc: BaseException | None, body: str) -> str:
    """The root cause in one line: the innermost exception, else the answer's message."""
    if exc is None:
        for record in records:
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                break
    if exc is not None:
        inner: BaseException = exc
        while True:
            nested = inner.__cause__ or (None if inner.__suppress_context__ else inner.__context__)
            if nested is None:
                break
            inner = nested
        frames = traceback.extract_tb(inner.__traceback__)
        where = next(
            (
                f"{Path(f.filename).relative_to(REPO_ROOT)}:{f.lineno}"
                for f in reversed(frames)
                if f.filename.startswith(str(REPO_ROOT)) and "/.venv/" not in f.filename
            ),
            f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?",
        )
        return f"{type(inner).__name__} at {where}"
    for record in records:
        return f"logged: {record.getMessage()[:160]}"
    return f"answered: {body[:160]}"


def _message(records: list[logging.LogRecord], exc: BaseException | None, body: str) -> str:
    if exc is None:
        exc = next((r.exc_info[1] for r in records if r.exc_info and r.exc_info[1]), None)
    if exc is not None:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return body[:200]


def _detail(records: list[logging.LogRecord], exc: BaseException | None) -> str:
    if exc is not None:
        return "".join(traceback.format_exception(exc))[-3000:]
    for record in records:
        if record.exc_info:
            return "".join(traceback.format_exception(*record.exc_info))[-3000:]
    return "\n".join(r.getMessage() for r in records)[-3000:]


def _aim_at_rows(case: Any, known_ids: dict[str, list[str]], pick: int) -> None:
    """Generated ids replaced by ones that exist, in the path and the body's top level."""
    containers = [case.path_parameters, case.query]
    if isinstance(case.body, dict):
        containers.append(case.body)
    for container in containers:
        for name in list(container or ()):
            known = known_ids.get(name)
            if known:
                container[name] = known[pick % len(known)]


def coverage_cases(operation: Any, *, limit: int) -> list[Any]:
    """Schemathesis's coverage cases (boundary and just-out-of-bounds values of
    every parameter and field), at most ``limit``, evenly spread over them."""
    generator = CoverageGenerator(
        operation=operation,
        generation_modes=list(GenerationMode),
        generation_config=operation.schema.config.generation_for(
            operation=operation, phase="coverage"
        ),
        auth_storage=None,
        override=Override(),
        feedback=NO_FEEDBACK,
    )
    cases = list(generator)
    if len(cases) <= limit:
        return cases
    return [cases[i * len(cases) // limit] for i in range(limit)]


class _Exerciser:
    """Sends one operation's cases with the chosen key; keeps what went wrong."""

    def __init__(
        self, target: FuzzTarget, operation: Any, log: _ErrorLog, statuses: Counter[int | None]
    ) -> None:
        self.target = target
        self.label = operation.label
        admin_route = operation.path.startswith("/admin")
        self.bearer = {
            "right": target.admin_key if admin_route else target.user_key,
            "wrong": "tlr_" + "0" * 32,
            "other role's": target.user_key if admin_route else target.admin_key,
        }
        self.log = log
        self.statuses = statuses
        self.findings: list[Finding] = []

    def send(self, case: Any, *, key: str, aim_at_rows: bool, pick: int) -> None:
        headers = case.headers if case.headers is not None else {}
        headers.pop("authorization", None)
        headers.pop("Authorization", None)
        if key in self.bearer:
            headers["Authorization"] = f"Bearer {self.bearer[key]}"
        case.headers = headers
        if aim_at_rows:
            _aim_at_rows(case, self.target.known_ids, pick)
        self.log.take()
        exc: BaseException | None = None
        status: int | None = None
        body = ""
        try:
            response = case.call(session=self.target.session, timeout=REQUEST_TIMEOUT_S)
            status = response.status_code
            body = response.text_lossy
        except Exception as error:  # the app raised past its error handlers
            exc = error
        self.statuses[status] += 1
        records = self.log.take()
        if exc is None and status is not None and status < 500:
            return
        self.findings.append(
            Finding(
                operation=self.label,
                status=status,
                cause=_cause(records, exc, body),
                message=_message(records, exc, body),
                key=key,
                curl=case.as_curl_command(),
                detail=_detail(records, exc),
            )
        )


def fuzz_operation(
    target: FuzzTarget,
    operation: Any,
    *,
    max_examples: int,
    log: _ErrorLog,
    statuses: Counter[int | None],
) -> list[Finding]:
    """The coverage cases, then ``max_examples`` generated ones; every 5xx or
    escaped exception. The coverage cases carry the right key; every other one
    aims at rows that exist."""
    exerciser = _Exerciser(target, operation, log, statuses)
    for index, case in enumerate(coverage_cases(operation, limit=2 * max_examples)):
        exerciser.send(case, key="right", aim_at_rows=index % 2 == 0, pick=index)

    strategies = [
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    ]

    @hypothesis.settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        verbosity=hypothesis.Verbosity.quiet,
    )
    # Hypothesis favours the first element of a sampled list, so most cases
    # carry the right key and aim at rows that exist; the rest check that
    # a missing, wrong or other role's key and unknown ids are refused.
    @hypothesis.given(
        case=st.one_of(strategies),
        key=st.sampled_from(["right", "none", "wrong", "other role's"]),
        aim_at_rows=st.sampled_from([True, False]),
        pick=st.integers(0, 7),
    )
    def run(case: Any, key: str, aim_at_rows: bool, pick: int) -> None:
        exerciser.send(case, key=key, aim_at_rows=aim_at_rows, pick=pick)

    run()
    return exerciser.findings


def fuzz_all(target: FuzzTarget, *, default_examples: int, budgets: dict[str, int]) -> FuzzReport:
    """Every operation of the schema with its budget; the grouped findings."""
    log = _ErrorLog()
    root = logging.getLogger()
    root.addHandler(log)
    report = FuzzReport()
    try:
        for result in target.schema.get_all_operations():
            operation = result.ok()
            examples = budgets.get(operation.label, default_examples)
            if examples <= 0:
                raise ValueError(f"{operation.label} has no budget: every operation is fuzzed")
            started = time.perf_counter()
            statuses: Counter[int | None] = Counter()
            findings = fuzz_operation(
                target, operation, max_examples=examples, log=log, statuses=statuses
            )
            for finding in findings:
                key = (finding.operation, finding.status, finding.cause)
                if key in report.groups:
                    report.groups[key].add(finding)
                else:
                    report.groups[key] = FindingGroup(finding)
            report.seconds[operation.label] = time.perf_counter() - started
            report.statuses[operation.label] = statuses
    finally:
        root.removeHandler(log)
    return report


def format_findings(groups: dict[tuple[str, int | None, str], FindingGroup]) -> str:
    lines = []
    for (operation, status, cause), group in sorted(
        groups.items(), key=lambda item: (item[0][2], item[0][0])
    ):
        lines.append(f"- {operation} -> {status or 'exception'} x{group.count}: {cause}")
        lines.append(f"    {group.shortest.message}")
        lines.append(f"    ({group.shortest.key} key) {group.shortest.curl}")
    return "\n".join(lines)
