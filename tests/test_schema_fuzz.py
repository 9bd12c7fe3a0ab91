"""Generated requests against every API operation answer below 500, on both
deployments: SQLite with the in-process cache, PostgreSQL with Redis.

A bounded, derandomized schemathesis run (see ``tests/schema_fuzz.py``):
schemathesis's coverage cases, then generated ones, for every operation, with
the real small chat model loaded, so the completion routes are fuzzed too,
with a smaller budget since each answer may run the model. The failure
message lists every distinct root cause with a curl reproduction.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.schema_fuzz import DEPLOYMENTS, format_findings, fuzz_all, fuzz_target

# Generated examples per operation (plus up to twice as many coverage cases).
# Both deployments together take about two to four minutes on 2 cores; most
# operations answer in milliseconds.
DEFAULT_EXAMPLES = 60
# The completion routes may run the model for each example (at most the 64
# token context of the fuzz settings), so they get fewer.
BUDGETS = {
    "POST /v1/chat/completions": 12,
    "POST /v1/completions": 12,
}


@pytest.mark.slow
@pytest.mark.models
@pytest.mark.parametrize(
    "deployment",
    [
        "sqlite+memory",
        pytest.param("postgresql+redis", marks=[pytest.mark.postgres, pytest.mark.redis]),
    ],
)
def test_generated_requests_never_get_a_server_error(deployment: str, tmp_path: Path) -> None:
    assert deployment in DEPLOYMENTS
    with fuzz_target(deployment, tmp_path) as target:
        report = fuzz_all(target, default_examples=DEFAULT_EXAMPLES, budgets=BUDGETS)
    # Every operation of the schema was fuzzed, none left out.
    operations = {result.ok().label for result in target.schema.get_all_operations()}
    assert set(report.statuses) == operations
    answered: Counter[int | None] = sum(report.statuses.values(), Counter())
    by_class = Counter(f"{s // 100}xx" if s is not None else "escaped" for s in answered.elements())
    print(
        f"{deployment}: {answered.total()} generated requests over {len(operations)} "
        f"operations in {sum(report.seconds.values()):.0f} s: {dict(sorted(by_class.items()))}"
    )
    if report.groups:
        pytest.fail("server errors on generated requests:\n" + format_findings(report.groups))
