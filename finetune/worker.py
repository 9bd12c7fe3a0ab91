"""The fine-tune worker: claims a job, trains, evaluates, registers, promotes.

One job, start to end:

1. claim it with a lease; a heartbeat thread renews the lease and notices a
   cancel request or a lost lease;
2. build the data set (the user's examples and liked answers, or every user's
   for a generalist, or the uploaded file a job of the OpenAI-shaped API names),
   tokenized as served and split by time;
3. train the expert on a freshly loaded NF4 base: for a specialist, beside
   the frozen active generalists, with the CoMiGS gate (``finetune.training``);
4. refuse weights no healthy training produces (``check_magnitudes``: a run
   that diverged fails with that reason, nothing is stored), then score base /
   current / candidate as serving would serve them on the test split and the
   generic text set (``finetune.evaluation``; a non-finite score holds the
   candidate back);
5. register the candidate in the same transaction that checks the lease, so a
   worker that lost its job registers nothing; promote it if it passed.

A retried job whose earlier attempt registered its version (and then died)
does not train again: it finishes what that attempt left, so a job yields at
most one version however often its worker dies.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.errors import AdapterError, InvalidAdapter, InvalidTransition
from adapters.expert_sets import ExpertRef
from adapters.lora_weights import LoraWeights
from adapters.registry import AdapterRegistry, resolve_expert_set
from adapters.validation import check_magnitudes
from finetune.base_loading import load_evaluation_base, load_training_base
from finetune.config import TrainingConfig
from finetune.conversations import (
    TimeSplit,
    TokenizedConversation,
    split_by_time,
    split_for_file,
    tokenize_conversation,
)
from finetune.crash_points import WEIGHTS_WRITTEN, crash_point
from finetune.dataset import Conversation, collect_conversations, file_conversations
from finetune.errors import ConversationTooLong, DatasetError, JobCancelled, LeaseLost
from finetune.evaluation import (
    BaseScoreCache,
    EvaluationReport,
    GateRules,
    ProbeSet,
    Variant,
    VariantScorer,
    evaluate_candidate,
    generic_conversations,
)
from finetune.experts import attach_experts
from finetune.factual_probes import FACTUAL_PROBES, FactualProbe
from finetune.generic_text import GENERIC_TEXTS
from finetune.health import Heartbeat
from finetune.queue import ClaimedJob, JobQueue
from finetune.settings import FinetuneSettings
from finetune.training import Progress, train_experts
from finetune.training_plan import plan_training
from finetune.triggers import JobTrigger, TriggerPolicy
from models.device import pick_device
from storage.repositories import AdapterRepository, BaseModelRepository
from storage.tables import AdapterKind, AdapterState, AdapterVersion, BaseModelRow, Decider, User

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    name: str
    model_store_dir: Path
    device: str = "auto"  # "auto": the GPU when there is one
    training: TrainingConfig = field(default_factory=TrainingConfig)
    gate: GateRules = field(default_factory=GateRules)
    # The generic passages the gate scores for forgetting (fewer: faster, noisier).
    generic_texts: tuple[str, ...] = GENERIC_TEXTS
    # The factual questions a candidate must still answer (none: the check is off).
    factual_probes: tuple[FactualProbe, ...] = FACTUAL_PROBES
    heartbeat_seconds: float = 2.0
    poll_seconds: float = 2.0
    progress_every_seconds: float = 1.0
    # The triggers (``before_claim``) run at most this often.
    trigger_every_seconds: float = 30.0
    # Promote a candidate that passes the gate (off: admins promote by hand).
    auto_promote: bool = True
    # Touched at every poll and lease renewal, for a liveness probe (finetune.health).
    heartbeat_file: Path | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a worker needs a name")
        for name in (
            "heartbeat_seconds",
            "poll_seconds",
            "progress_every_seconds",
            "trigger_every_seconds",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")

    @property
    def torch_device(self) -> torch.device:
        return pick_device(self.device)


class LeaseKeeper:
    """Renews a claimed job's lease in the background while the job runs.

    The training loop calls ``check()`` between steps: it raises
    ``JobCancelled`` within a heartbeat of a cancel request and ``LeaseLost``
    once the job is no longer this worker's.
    """

    def __init__(
        self,
        queue: JobQueue,
        claim: ClaimedJob,
        every_seconds: float,
        *,
        on_renewed: Callable[[], None] | None = None,
    ) -> None:
        self._queue = queue
        self._claim = claim
        self._every = every_seconds
        self._on_renewed = on_renewed
        self._stop = threading.Event()
        self._cancel = False
        self._lost: LeaseLost | None = None
        self._thread = threading.Thread(target=self._run, name=f"lease-{claim.job_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self._cancel = self._queue.heartbeat(self._claim) or self._cancel
            except LeaseLost as lost:
                self._lost = lost
                return
            except Exception:  # a database hiccup: try again next beat
                log.exception("heartbeat of job %s failed", self._claim.job_id)
                continue
            # Only a renewed lease counts as alive: a worker that cannot renew
            # loses its job anyway.
            if self._on_renewed is not None:
                self._on_renewed()

    def check(self) -> None:
        if self._lost is not None:
            raise self._lost
        if self._cancel:
            raise JobCancelled(f"job {self._claim.job_id} was cancelled")


@dataclass(frozen=True)
class ExpertsNow:
    """What a job trains beside, and what it must beat."""

    # (adapter id, weights) of the active generalists, in the gate's order.
    generalists: list[tuple[str, LoraWeights]]
    # The experts serving answers with now: for a specialist job the
    # generalists and the user's active specialist; for a generalist job
    # that generalist's active version.
    current: list[LoraWeights]
    current_gated: bool
    # The active version of the expert being trained: the new one's parent.
    parent_version_id: str | None


@dataclass
class PreparedData:
    split: TimeSplit
    source_counts: dict[str, int]
    too_long: int  # conversations left out: longer than the model takes


class FinetuneWorker:
    def __init__(
        self,
        queue: JobQueue,
        registry: AdapterRegistry,
        config: WorkerConfig,
        *,
        before_claim: Callable[[], object] | None = None,
    ) -> None:
        self.queue = queue
        self.registry = registry
        self.database = registry.database
        self.config = config
        # Run before each claim (the automatic triggers), errors logged, not raised.
        self.before_claim = before_claim
        self._heartbeat = Heartbeat(config.heartbeat_file) if config.heartbeat_file else None
        # The base models' scores on the fixed generic passages and probes, kept between jobs.
        self._base_scores = BaseScoreCache()

    def _beat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.beat()

    # The loop -----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Claim and run jobs until ``stop`` is set (checked between jobs)."""
        log.info("fine-tune worker %s started on %s", self.config.name, self.config.torch_device)
        triggered_at = -math.inf
        while not stop.is_set():
            self._beat()
            now = time.monotonic()
            if (
                self.before_claim is not None
                and now - triggered_at >= self.config.trigger_every_seconds
            ):
                triggered_at = now
                try:
                    self.before_claim()
                except Exception:
                    log.exception("the fine-tune triggers failed")
            if self.run_one() is None:
                stop.wait(self.config.poll_seconds)

    def run_one(self) -> str | None:
        """Claim one job and run it to its end; the job's id, or None if none was due."""
        claim = self.queue.claim(self.config.name)
        if claim is None:
            return None
        self.execute(claim)
        return claim.job_id

    def execute(self, claim: ClaimedJob) -> None:
        """Run a claimed job; every ending is written to the queue (or, with the lease
        lost, nothing is: the job is someone else's now)."""
        try:
            with LeaseKeeper(
                self.queue, claim, self.config.heartbeat_seconds, on_renewed=self._beat
            ) as lease:
                self._execute(claim, lease)
        except LeaseLost:
            log.warning("job %s: lease lost, stopping without writing", claim.job_id)
        except KeyboardInterrupt:
            # The worker is being stopped: the job goes back to the queue.
            self._fail(claim, "the worker was stopped while running the job", retryable=True)
            raise
        except JobCancelled:
            self._end(claim, lambda: self.queue.cancelled(claim), "cancelled", {})
        except DatasetError as error:
            self._fail(claim, str(error), retryable=False)
        except (AdapterError, ValueError) as error:
            # What was trained does not validate, or the settings are wrong:
            # another attempt would do the same.
            self._fail(claim, f"{type(error).__name__}: {error}", retryable=False)
        except Exception as error:  # any other failure is retried
            log.exception("job %s failed", claim.job_id)
            self._fail(claim, f"{type(error).__name__}: {error}", retryable=True)
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _fail(self, claim: ClaimedJob, error: str, *, retryable: bool) -> None:
        self._end(
            claim,
            lambda: self.queue.fail(claim, error, retryable=retryable),
            "error",
            {"error": error, "retryable": retryable},
        )

    def _end(
        self, claim: ClaimedJob, write: Callable[[], object], kind: str, payload: dict[str, Any]
    ) -> None:
        try:
            self.queue.add_event(claim, kind, payload)
            write()
        except LeaseLost:
            log.warning("job %s: lease lost before its end (%s) was written", claim.job_id, kind)

    # One job ------------------------------------------------------------------------

    def _execute(self, claim: ClaimedJob, lease: LeaseKeeper) -> None:
        earlier = self._version_of_job(claim.job_id)
        if earlier is not None:
            # An earlier attempt registered this job's version and then died.
            self.queue.add_event(claim, "resumed", {"version_id": earlier.id})
            self._finish(claim, earlier, promote=bool(earlier.eval_metrics.get("promote")))
            return

        self.queue.add_event(claim, "started", {"attempt": claim.attempt, "worker": claim.worker})
        base = self._base_model(claim.base_model_id)
        model_dir = self.config.model_store_dir / base.path
        config = self.config.training.with_hyperparameters(claim.hyperparameters)
        tokenizer = _load_tokenizer(model_dir)
        data = self._prepare_data(claim, tokenizer, max_length=base.context_length)
        self.queue.add_event(
            claim,
            "dataset",
            {
                "conversations": sum(data.source_counts.values()),
                "sources": data.source_counts,
                "train": len(data.split.train),
                "validation": len(data.split.validation),
                "test": len(data.split.test),
                "train_tokens": sum(len(c.input_ids) for c in data.split.train),
                "left_out_too_long": data.too_long,
            },
        )
        lease.check()

        plan = plan_training(config, train_conversations=len(data.split.train))
        self.queue.add_event(claim, "plan", plan.payload())
        now = self._experts_now(claim)
        torch.manual_seed(config.seed)
        device = self.config.torch_device
        model = load_training_base(model_dir, quantization=config.quantization, device=device)
        experts = attach_experts(
            model,
            config,
            base_model_id=claim.base_model_id,
            generalists=now.generalists if claim.kind is AdapterKind.SPECIALIST else (),
        )
        report = train_experts(
            experts,
            data.split,
            pad_id=_pad_id(tokenizer),
            plan=plan,
            on_progress=self._progress_writer(claim, lease),
        )
        weights = experts.export()
        del experts, model
        gc.collect()
        self.queue.add_event(
            claim,
            "trained",
            {
                "steps": report.steps,
                "gate_steps": report.gate_steps,
                "tokens": report.tokens,
                "seconds": round(report.seconds, 2),
                "tokens_per_second": round(report.tokens_per_second, 1),
                "first_loss": _json_loss(report.first_loss),
                "last_loss": _json_loss(report.last_loss),
                "first_validation_loss": _json_loss(report.first_validation_loss),
                "best_validation_loss": _json_loss(report.best_validation_loss),
                "best_step": report.best_step,
                "stopped_early": report.stopped_early,
            },
        )
        lease.check()
        try:
            check_magnitudes(weights, self.registry.limits)
        except InvalidAdapter as error:
            # Not retryable (the execute handler): the same data and seed diverge again.
            raise InvalidAdapter(
                f"training diverged (last loss {report.last_loss:.4g}); the trained weights "
                f"are unusable and were not stored: {error.reason}"
            ) from None

        evaluation = self._evaluate(
            model_dir, base.sha256, tokenizer, data.split.test, weights, now, claim, lease
        )
        metrics = evaluation.as_metrics() | {
            "training": {
                "steps": report.steps,
                "last_loss": _json_loss(report.last_loss),
                "best_validation_loss": _json_loss(report.best_validation_loss),
                "stopped_early": report.stopped_early,
                "plan": plan.payload(),
            },
            "quantization": config.quantization,
        }
        self.queue.add_event(claim, "evaluation", metrics)
        lease.check()

        version = self.registry.register_candidate(
            weights,
            kind=claim.kind,
            user_id=claim.user_id,
            eval_metrics=metrics,
            parent_version_id=now.parent_version_id,
            job_id=claim.job_id,
            before_commit=lambda session: self._before_registering(session, claim),
        )
        self.queue.add_event(
            claim,
            "registered",
            {
                "version_id": version.id,
                "adapter_id": version.adapter_id,
                "version": version.version,
            },
        )
        self._finish(claim, version, promote=evaluation.promote)

    def _before_registering(self, session: Session, claim: ClaimedJob) -> None:
        # Inside the transaction that adds the version, after its weights were
        # written: the version commits only if the job is still ours.
        crash_point(WEIGHTS_WRITTEN)
        self.queue.check_owned(session, claim)

    def _finish(self, claim: ClaimedJob, version: AdapterVersion, *, promote: bool) -> None:
        outcome, reason = "held_back", None
        if version.state is AdapterState.CANDIDATE and promote and self.config.auto_promote:
            try:
                # The candidate was judged against its parent, the version
                # active when the job started: promote only over that one.
                self.registry.promote(
                    version_id=version.id,
                    by=Decider.GATE,
                    expected_active_version_id=version.parent_version_id,
                )
                self.queue.add_event(claim, "promoted", {"version_id": version.id})
                outcome = "promoted"
            except InvalidTransition as error:
                # Someone promoted or retired by hand meanwhile: theirs stands.
                self.queue.add_event(claim, "not_promoted", {"reason": str(error)})
                reason = str(error)
        elif version.state is AdapterState.CANDIDATE:
            reasons = version.eval_metrics.get("reasons") or [
                "automatic promotion is off: the user or an admin decides"
            ]
            self.queue.add_event(claim, "not_promoted", {"reasons": reasons})
            reason = "; ".join(reasons)
        else:
            # A resumed job whose version was already decided by hand.
            outcome = "promoted" if version.state is AdapterState.ACTIVE else "held_back"
            reason = None if outcome == "promoted" else f"the version is {version.state.value}"
        self.queue.succeed(
            claim,
            result_version_id=version.id,
            adapter_id=version.adapter_id,
            outcome=outcome,
            outcome_reason=reason,
        )

    def _progress_writer(self, claim: ClaimedJob, lease: LeaseKeeper) -> Callable[[Progress], None]:
        last = 0.0

        def write(progress: Progress) -> None:
            nonlocal last
            lease.check()
            now = time.monotonic()
            final = progress.step == progress.total_steps
            checked = progress.validation_loss is not None
            if (
                final
                or checked
                or progress.step == 1
                or now - last >= self.config.progress_every_seconds
            ):
                self.queue.add_event(claim, "progress", _json_safe(progress.payload()))
                last = now

        return write

    # Pieces -------------------------------------------------------------------------

    def _version_of_job(self, job_id: str) -> AdapterVersion | None:
        with self.database.session() as session:
            return session.scalar(select(AdapterVersion).where(AdapterVersion.job_id == job_id))

    def _base_model(self, base_model_id: str) -> BaseModelRow:
        with self.database.session() as session:
            return BaseModelRepository(session).get(model_id=base_model_id)

    def _prepare_data(self, claim: ClaimedJob, tokenizer: Any, *, max_length: int) -> PreparedData:
        validation: list[Conversation] | None = None
        with self.database.session() as session:
            if claim.kind is AdapterKind.SPECIALIST:
                assert claim.user_id is not None
                if session.get(User, claim.user_id) is None:
                    raise DatasetError(f"the user {claim.user_id} no longer exists")
                if claim.training_file_id is not None:
                    # A job of the OpenAI-shaped API learns from its file alone.
                    conversations = file_conversations(
                        session,
                        user_id=claim.user_id,
                        file_id=claim.training_file_id,
                        source="training_file",
                    )
                    if claim.validation_file_id is not None:
                        validation = file_conversations(
                            session,
                            user_id=claim.user_id,
                            file_id=claim.validation_file_id,
                            source="validation_file",
                        )
                else:
                    conversations = collect_conversations(session, user_id=claim.user_id)
            else:
                conversations = _pooled_conversations(session)
        if not conversations:
            raise DatasetError("there is no data to learn from: upload examples or rate answers")
        tokenized, too_long = _tokenize_all(tokenizer, conversations, max_length=max_length)
        sources: dict[str, int] = {}
        for conversation in [*conversations, *(validation or [])]:
            sources[conversation.source] = sources.get(conversation.source, 0) + 1
        validating = None
        if validation is not None:
            validating, also_too_long = _tokenize_all(tokenizer, validation, max_length=max_length)
            too_long += also_too_long
        try:
            split = (
                split_by_time(tokenized)
                if claim.training_file_id is None
                else split_for_file(tokenized, validating)
            )
        except DatasetError as error:
            if not too_long:
                raise
            raise DatasetError(
                f"{error} ({too_long} more were left out: longer than the {max_length} "
                "tokens the model takes)"
            ) from None
        return PreparedData(split, sources, too_long)

    def _experts_now(self, claim: ClaimedJob) -> ExpertsNow:
        with self.database.session() as session:
            shared = resolve_expert_set(session, base_model_id=claim.base_model_id, user_id=None)
            mine = resolve_expert_set(
                session, base_model_id=claim.base_model_id, user_id=claim.user_id
            )
            target = AdapterRepository(session).find_adapter(
                kind=claim.kind, base_model_id=claim.base_model_id, user_id=claim.user_id
            )

        def load(ref: ExpertRef) -> LoraWeights:
            return self.registry.load_weights(sha256=ref.sha256, base_model_id=claim.base_model_id)

        generalists = [(ref.adapter_id, load(ref)) for ref in shared.generalists]
        if claim.kind is AdapterKind.SPECIALIST:
            served = list(mine.experts)
        else:
            served = [ref for ref in shared.generalists if target and ref.adapter_id == target.id]
        parent = next(
            (ref.version_id for ref in served if target and ref.adapter_id == target.id), None
        )
        current = [load(ref) for ref in served]
        # Serving's rule (adapters.device.slot_cache): the specialist's gate applies
        # when it scores exactly the active generalists.
        gated = (
            claim.kind is AdapterKind.SPECIALIST
            and mine.specialist is not None
            and current[-1].has_gate
            and current[-1].gate_experts == tuple(g for g, _ in generalists)
        )
        return ExpertsNow(generalists, current, gated, parent)

    def _evaluate(
        self,
        model_dir: Path,
        base_sha256: str,
        tokenizer: Any,
        test: Sequence[TokenizedConversation],
        weights: LoraWeights,
        now: ExpertsNow,
        claim: ClaimedJob,
        lease: LeaseKeeper,
    ) -> EvaluationReport:
        if claim.kind is AdapterKind.SPECIALIST:
            candidate = (*[w for _, w in now.generalists], weights)
        else:
            candidate = (weights,)
        variants = [
            Variant("base"),
            Variant("current", tuple(now.current), gated=now.current_gated),
            Variant("candidate", candidate, gated=weights.has_gate),
        ]
        model = load_evaluation_base(model_dir, device=self.config.torch_device)
        scorer = VariantScorer(model, variants, pad_id=_pad_id(tokenizer))
        generic = generic_conversations(tokenizer, self.config.generic_texts)
        probes = (
            ProbeSet.build(tokenizer, self.config.factual_probes)
            if self.config.factual_probes
            else None
        )
        started = time.monotonic()

        def stage_done(name: str, done: int, total: int) -> None:
            # Like training's progress: a cancel or a lost lease stops the evaluation too.
            lease.check()
            seconds = round(time.monotonic() - started, 1)
            payload = {"stage": name, "done": done, "total": total, "seconds": seconds}
            self.queue.add_event(claim, "evaluating", payload)

        return evaluate_candidate(
            scorer,
            test,
            generic,
            probes=probes,
            tokenizer=tokenizer,
            rules=self._gate_rules(claim),
            base_scores=(self._base_scores, base_sha256),
            on_stage=stage_done,
        )

    def _gate_rules(self, claim: ClaimedJob) -> GateRules:
        """The service's rules, with the user's own limits where an admin set them."""
        rules = self.config.gate
        if claim.user_id is None:
            return rules
        with self.database.session() as session:
            own = session.get(User, claim.user_id)
            rise = None if own is None else own.finetune_max_generic_rise
            probe_loss = None if own is None else own.finetune_max_probe_loss
        where = f"this user's own limit, PATCH /admin/users/{claim.user_id}/fine-tuning"
        if rise is not None:
            rules = dataclasses.replace(rules, max_generic_rise=rise, generic_rise_source=where)
        if probe_loss is not None:
            rules = dataclasses.replace(rules, max_probe_loss=probe_loss, probe_loss_source=where)
        return rules


def _json_loss(loss: float) -> float | None:
    # JSON has no NaN or infinity (PostgreSQL refuses them): a diverged run's
    # loss is stored as null, and its reason says what happened.
    return round(loss, 5) if math.isfinite(loss) else None


def _json_safe(payload: dict[str, Any]) -> dict[str, Any]:
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in payload.items()
    }


def _pooled_conversations(session: Any) -> list[Conversation]:
    """Every user's data, oldest first: what a generalist learns from."""
    pooled: list[Conversation] = []
    for user_id in session.scalars(select(User.id)):
        pooled += collect_conversations(session, user_id=user_id)
    return sorted(pooled, key=lambda c: c.created_at)


def _tokenize_all(
    tokenizer: Any, conversations: Sequence[Conversation], *, max_length: int
) -> tuple[list[TokenizedConversation], int]:
    """The conversations as the model reads them, and how many were left out for being
    longer than it takes (one long example must not fail the whole job)."""
    tokenized: list[TokenizedConversation] = []
    too_long = 0
    for index, conversation in enumerate(conversations):
        try:
            tokenized.append(
                tokenize_conversation(tokenizer, conversation.messages, max_length=max_length)
            )
        except ConversationTooLong:
            too_long += 1
        except DatasetError as error:
            raise DatasetError(
                f"{conversation.source} {index + 1} of {len(conversations)}: {error}"
            ) from None
    return tokenized, too_long


def _load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad or 0)


def worker_from_settings(
    settings: FinetuneSettings,
    registry: AdapterRegistry,
    *,
    model_store_dir: Path,
    name: str,
) -> FinetuneWorker:
    """A worker configured as the fine-tune settings say, with the automatic triggers on."""
    queue = JobQueue(
        registry.database,
        lease_seconds=settings.lease_seconds,
        retry_base_seconds=settings.retry_base_seconds,
    )
    config = WorkerConfig(
        name=name,
        model_store_dir=model_store_dir,
        device=settings.device,
        training=TrainingConfig(quantization=settings.quantization, batch_size=settings.batch_size),
        heartbeat_seconds=settings.heartbeat_seconds,
        auto_promote=settings.auto_promote,
        gate=GateRules(
            max_generic_rise=settings.max_generic_rise,
            max_probe_loss=settings.max_probe_loss,
        ),
        trigger_every_seconds=settings.trigger_check_seconds,
        generic_texts=GENERIC_TEXTS[: settings.generic_texts],
        factual_probes=FACTUAL_PROBES[: settings.factual_probes],
        heartbeat_file=settings.heartbeat_file,
    )
    policy = TriggerPolicy.from_settings(settings)
    trigger = JobTrigger(registry.database, policy) if policy.enabled else None
    return FinetuneWorker(
        queue, registry, config, before_claim=trigger.run_once if trigger is not None else None
    )
