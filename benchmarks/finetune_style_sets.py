"""Does a specialist trained on 24 conversations learn the user's style, and keep its facts?

    python -m benchmarks.finetune_style_sets [--sets pirate json bullets] [--skip-damaged]

Per style set (``benchmarks.style_sets``), the real loop on an embedded service
(SQLite and blobs in a temporary directory, the settings' defaults but a CPU
worker): a user stores the set's 24 conversations as examples and queues a
specialist job on smollm2-135m-instruct with no hyperparameters, as a
``POST /v1/fine-tunes`` with an empty body would; a worker built by
``worker_from_settings`` (NF4 base, the data-sized training plan, the full
evaluation gate: 40 generic passages, 30 factual probes) runs it with
``run_one``. Printed: the job's ``plan``, ``trained`` and ``evaluation`` events,
the time from queueing to the job's end, and whether the gate promoted it.

If it was promoted, the user's active specialist, resolved and loaded through
the registry as serving does and run through serving's ``MultiLoraModel``
(``finetune.evaluation.VariantScorer``), answers the set's 12 held-out prompts
greedily (96 new tokens); the share whose reply passes the set's detector is the
style score, beside the base model's share as a control. The 30 factual probes
are asked again with the same generation as the gate asks them
(``finetune.evaluation.ProbeSet``). Unless ``--skip-damaged``, a second user
uploads the same set with every answer moved to another question
(``damaged(seed=0)``): the gate should hold that one back.

Aims, printed beside the figures: the style on at least 80% of the held-out
prompts, at least 95% of the probes the base model answers still answered,
queue to decision under 300 s on a 2-core CPU, the damaged set held back.
One set is two jobs (each training, then the gate's scoring) and the generation:
``--sets pirate`` took 35 minutes on a 2-core CPU shared with a CI run (QLoRA at
14-24 tokens/s); all three sets take about three times as long.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoTokenizer

from adapters.registry import AdapterRegistry
from benchmarks.style_sets import STYLE_SETS, Conversation, StyleSet, damaged
from finetune.base_loading import load_evaluation_base
from finetune.evaluation import NEXT_TURN, ProbeSet, Variant, VariantScorer
from finetune.worker import FinetuneWorker, worker_from_settings
from models.catalog import register_prepared_models
from models.chat_format import prompt_ids
from models.store.prepare import load_prepared
from serving.services import Services
from serving.settings import Settings, load_settings
from storage.repositories import (
    BaseModelRepository,
    ExampleRepository,
    JobRepository,
    UserRepository,
)
from storage.tables import AdapterKind, JobState
from tests.server import prepared_model_store

MODEL = "smollm2-135m-instruct"
HELD_OUT_MAX_NEW_TOKENS = 96
DAMAGED_SEED = 0
AIM_STYLE_SHARE = 0.80
AIM_PROBES_KEPT = 0.95
AIM_DECISION_SECONDS = 300.0
REPORTED_EVENTS = ("plan", "trained", "evaluation")


@dataclass(frozen=True)
class JobResult:
    """One job from queueing to its end, as the job's row and events tell it."""

    user_id: str
    job_id: str
    state: JobState
    error: str | None
    promoted: bool
    reasons: tuple[str, ...]  # the gate's (or the worker's) reasons for holding back
    decision_seconds: float  # queued to ended, measured around ``run_one``
    events: dict[str, dict[str, Any]]  # the last event of each kind in REPORTED_EVENTS

    @property
    def verdict(self) -> str:
        if self.state is not JobState.SUCCEEDED:
            return f"job {self.state.value}"
        return "promoted" if self.promoted else "held back"


@dataclass(frozen=True)
class ServedCheck:
    """The active specialist as served, on the held-out prompts and the factual probes."""

    replies: tuple[str, ...]  # the specialist's, one per held-out prompt
    style_share: float
    base_style_share: float
    probes_asked: int
    probes_base: int
    probes_served: int
    probes_kept: float  # of those the base model answers, the share still answered


@dataclass(frozen=True)
class SetResult:
    style_set: StyleSet
    job: JobResult
    served: ServedCheck | None  # None unless the job promoted a specialist
    damaged: JobResult | None  # None with --skip-damaged


@contextmanager
def embedded_service(data_dir: Path) -> Iterator[tuple[Settings, Services]]:
    """What ``tailor serve`` opens in embedded mode, with a CPU fine-tune worker.

    The database and the cache are forced to the embedded ones so that an
    operator's environment cannot point the benchmark at a real deployment.
    """
    settings = load_settings(
        storage={
            "data_dir": data_dir,
            "model_store": prepared_model_store(),
            "database_url": None,
            "redis_url": None,
        },
        finetune={"device": "cpu"},
    )
    services = Services.open(settings, migrate_schema=True)
    try:
        with services.database.session() as session:
            register_prepared_models(
                session,
                load_prepared(settings.storage.model_store_dir),
                store_dir=settings.storage.model_store_dir,
                prices=settings.router.prices,
            )
        yield settings, services
    finally:
        services.close()


def run_job(worker: FinetuneWorker, name: str, conversations: Sequence[Conversation]) -> JobResult:
    """A new user, their examples, one default specialist job run to its end."""
    database = worker.database
    with database.session() as session:
        user_id = UserRepository(session).create(name=name).id
        ExampleRepository(session).add_many(
            user_id=user_id, examples=[list(conversation) for conversation in conversations]
        )
    started = time.perf_counter()
    with database.session() as session:
        job, _ = JobRepository(session).create(
            kind=AdapterKind.SPECIALIST, base_model_id=MODEL, user_id=user_id, hyperparameters={}
        )
        job_id = job.id
    claimed = worker.run_one()
    decision_seconds = time.perf_counter() - started
    if claimed != job_id:
        raise RuntimeError(f"the worker ran {claimed!r}, not the job just queued ({job_id})")
    with database.session() as session:
        jobs = JobRepository(session)
        ended = jobs.get(job_id=job_id)
        events = {e.kind: e.payload for e in jobs.list_events(job_id=job_id)}
        state, error = ended.state, ended.error
        outcome, outcome_reason = ended.outcome, ended.outcome_reason
    evaluation = events.get("evaluation", {})
    reasons = tuple(evaluation.get("reasons") or ([outcome_reason] if outcome_reason else []))
    if error:
        reasons += (error,)
    return JobResult(
        user_id=user_id,
        job_id=job_id,
        state=state,
        error=error,
        promoted=state is JobState.SUCCEEDED and outcome == "promoted",
        reasons=reasons,
        decision_seconds=decision_seconds,
        events={kind: events[kind] for kind in REPORTED_EVENTS if kind in events},
    )


def served_variant(registry: AdapterRegistry, user_id: str) -> Variant:
    """The user's experts as serving resolves them, with serving's gate rule."""
    experts = registry.expert_set(base_model_id=MODEL, user_id=user_id)
    if experts.specialist is None:
        raise RuntimeError(f"user {user_id} has no active specialist")
    weights = tuple(
        registry.load_weights(sha256=ref.sha256, base_model_id=MODEL) for ref in experts.experts
    )
    # adapters.device.slot_cache: the specialist's gate applies when it scores exactly
    # the generalists it is served with.
    gated = weights[-1].has_gate and weights[-1].gate_experts == tuple(
        ref.adapter_id for ref in experts.generalists
    )
    return Variant("served", weights, gated=gated)


def check_served(
    settings: Settings, worker: FinetuneWorker, style_set: StyleSet, user_id: str
) -> ServedCheck:
    with worker.database.session() as session:
        model_dir = (
            settings.storage.model_store_dir / BaseModelRepository(session).get(model_id=MODEL).path
        )
    tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = torch.device("cpu")
    scorer = VariantScorer(
        load_evaluation_base(model_dir, device=device),
        [Variant("base"), served_variant(worker.registry, user_id)],
        pad_id=int(pad or 0),
    )
    prompts = [
        prompt_ids(tokenizer, [{"role": "user", "content": prompt}])
        for prompt in style_set.held_out_prompts
    ]

    def replies(name: str) -> list[str]:
        generated = scorer.generate(name, prompts, max_new_tokens=HELD_OUT_MAX_NEW_TOKENS)
        return [
            tokenizer.decode(ids, skip_special_tokens=True).split(NEXT_TURN)[0] for ids in generated
        ]

    served = replies("served")
    base = replies("base")
    probes = ProbeSet.build(tokenizer, worker.config.factual_probes)
    by_base = probes.answered(scorer, "base")
    by_served = probes.answered(scorer, "served")
    base_count = sum(by_base)
    kept = sum(b and s for b, s in zip(by_base, by_served, strict=True))
    return ServedCheck(
        replies=tuple(served),
        style_share=_share(style_set.shows_style(reply) for reply in served),
        base_style_share=_share(style_set.shows_style(reply) for reply in base),
        probes_asked=len(probes.probes),
        probes_base=base_count,
        probes_served=sum(by_served),
        probes_kept=kept / base_count if base_count else 1.0,
    )


def _share(flags: Iterable[bool]) -> float:
    values = list(flags)
    return sum(values) / len(values) if values else 0.0


def print_job(label: str, job: JobResult) -> None:
    print(
        f"  {label}: job {job.job_id} {job.state.value}, {job.verdict}, "
        f"{job.decision_seconds:.1f} s queued to ended"
    )
    for kind, payload in job.events.items():
        print(f"    {kind}: {json.dumps(payload, sort_keys=True)}")
    for reason in job.reasons:
        print(f"    reason: {reason}")
    sys.stdout.flush()


def print_served(style_set: StyleSet, served: ServedCheck) -> None:
    print(
        f"  served specialist: style on {served.style_share:.0%} of "
        f"{len(served.replies)} held-out prompts (base model {served.base_style_share:.0%}); "
        f"probes {served.probes_served}/{served.probes_asked} "
        f"(base {served.probes_base}, kept {served.probes_kept:.0%})"
    )
    for prompt, reply in zip(style_set.held_out_prompts, served.replies, strict=True):
        mark = "+" if style_set.shows_style(reply) else "-"
        print(f"    {mark} {prompt!r} -> {reply.strip()[:160]!r}")
    sys.stdout.flush()


def _number(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "-"


def summary_rows(result: SetResult) -> dict[str, str]:
    """The figures of one set, keyed by the summary table's row names."""
    job = result.job
    plan = job.events.get("plan", {})
    trained = job.events.get("trained", {})
    evaluation = job.events.get("evaluation", {})
    nll = evaluation.get("nll_per_token") or {}
    probes = evaluation.get("probes_answered") or {}
    served = result.served
    rows = {
        "steps": _number(trained.get("steps"), "d") + f" (plan {_number(plan.get('steps'), 'd')})",
        "batch": _number(plan.get("batch_size"), "d"),
        "epochs": _number(plan.get("epochs"), ".2f"),
        "train seconds": _number(trained.get("seconds"), ".1f"),
        "queued to decision s": f"{job.decision_seconds:.1f}",
        "gate verdict": job.verdict,
        "test NLL base/cand": f"{_number(nll.get('base'), '.3f')}/"
        f"{_number(nll.get('candidate'), '.3f')}",
        "generic rise": _number(evaluation.get("generic_rise"), "+.1%"),
        "probes base/cand (gate)": f"{_number(probes.get('base'), 'd')}/"
        f"{_number(probes.get('candidate'), 'd')} of {evaluation.get('probes_asked', '-')}",
        "probes kept (served)": "-" if served is None else f"{served.probes_kept:.0%}",
        "style held-out (served)": "-"
        if served is None
        else f"{served.style_share:.0%} (base {served.base_style_share:.0%})",
    }
    if result.damaged is not None:
        rows["damaged verdict"] = result.damaged.verdict
    return rows


AIMS = {
    "queued to decision s": f"< {AIM_DECISION_SECONDS:.0f}",
    "gate verdict": "promoted",
    "probes kept (served)": f">= {AIM_PROBES_KEPT:.0%}",
    "style held-out (served)": f">= {AIM_STYLE_SHARE:.0%}",
    "damaged verdict": "held back",
}


def aims_met(result: SetResult) -> dict[str, bool]:
    met = {
        "decision under the limit": result.job.decision_seconds < AIM_DECISION_SECONDS,
        "promoted": result.job.promoted,
        "style": result.served is not None and result.served.style_share >= AIM_STYLE_SHARE,
        "probes kept": result.served is not None and result.served.probes_kept >= AIM_PROBES_KEPT,
    }
    if result.damaged is not None:
        met["damaged held back"] = (
            result.damaged.state is JobState.SUCCEEDED and not result.damaged.promoted
        )
    return met


def print_summary(results: Sequence[SetResult]) -> None:
    table = [summary_rows(result) for result in results]
    names = list(table[0])
    width = max(len(name) for name in names)
    columns = [
        max(len(result.style_set.name), *(len(rows.get(n, "")) for n in names))
        for result, rows in zip(results, table, strict=True)
    ]
    print("\nsummary")
    header = "  ".join(f"{r.style_set.name:<{w}}" for r, w in zip(results, columns, strict=True))
    print(f"{'':<{width}}  {header}  aim")
    for name in names:
        cells = "  ".join(
            f"{rows.get(name, '-'):<{w}}" for rows, w in zip(table, columns, strict=True)
        )
        print(f"{name:<{width}}  {cells}  {AIMS.get(name, '')}".rstrip())
    for result in results:
        if result.damaged is not None:
            reasons = "; ".join(result.damaged.reasons) or "none"
            print(f"{result.style_set.name} damaged: {result.damaged.verdict}; reasons: {reasons}")
    for result in results:
        met = aims_met(result)
        missed = [aim for aim, ok in met.items() if not ok]
        print(
            f"{result.style_set.name} aims: "
            + ("all met" if not missed else "missed: " + ", ".join(missed))
        )


def run_sets(data_dir: Path, names: Sequence[str], *, with_damaged: bool) -> list[SetResult]:
    """Every chosen set through one embedded service, printing as it goes."""
    results: list[SetResult] = []
    with embedded_service(data_dir) as (settings, services):
        worker = worker_from_settings(
            settings.finetune,
            services.adapters,
            model_store_dir=settings.storage.model_store_dir,
            name="style-bench",
        )
        print(
            f"{MODEL} on {worker.config.torch_device}, quantization "
            f"{worker.config.training.quantization}, default hyperparameters; "
            f"{len(worker.config.generic_texts)} generic passages, "
            f"{len(worker.config.factual_probes)} factual probes; "
            f"{torch.get_num_threads()} torch threads",
            flush=True,
        )
        for name in names:
            style_set = STYLE_SETS[name]
            print(f"\n{name}: {len(style_set.train)} conversations", flush=True)
            job = run_job(worker, f"{name}-user", style_set.train)
            print_job("good set", job)
            served = None
            if job.promoted:
                served = check_served(settings, worker, style_set, job.user_id)
                print_served(style_set, served)
            bad = None
            if with_damaged:
                bad = run_job(worker, f"{name}-damaged-user", damaged(style_set, seed=DAMAGED_SEED))
                print_job(f"damaged set (seed {DAMAGED_SEED})", bad)
            results.append(SetResult(style_set, job, served, bad))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sets", nargs="+", choices=sorted(STYLE_SETS), default=list(STYLE_SETS))
    parser.add_argument(
        "--skip-damaged", action="store_true", help="no second user with the damaged set"
    )
    args = parser.parse_args()
    # The worker logs a failed job's traceback: shown, not swallowed.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tailor-style-bench-") as data_dir:
        results = run_sets(Path(data_dir), args.sets, with_damaged=not args.skip_damaged)
    print_summary(results)
    seconds = time.perf_counter() - started
    print(f"wall time {seconds:.0f} s ({seconds / 60:.1f} min)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
