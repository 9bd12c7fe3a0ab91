"""``/v1/fine_tuning/jobs``: the caller's fine-tune jobs in the shape of OpenAI's API.

The same job rows as ``/v1/fine-tunes``, queued and cancelled through the same
code (``serving.routes.fine_tunes``, ``finetune.admission``, ``JobRepository``);
what differs is the shape, and what a job created here learns from: the
uploaded file it names (``training_file``, ``validation_file``), not the user's
examples and liked answers. Its version is a version of the user's specialist
on that base model like any other; once promoted it is the model
``fine_tuned_model`` names (``adapters.fine_tuned_models``).

Hyperparameters take OpenAI's names, mapped onto Tailor's: ``n_epochs`` ->
``epochs``, ``batch_size`` -> ``batch_size``, ``learning_rate_multiplier`` scales
the rate the plan picks (``finetune.training_plan``), ``seed`` -> the training
seed; ``"auto"`` leaves one to the plan. A field Tailor does not know, anywhere
in the body, is a 400 naming it, before anything is read or stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Response, status
from sqlalchemy.orm import Session

from adapters.fine_tuned_models import (
    find_fine_tuned_model,
    looks_fine_tuned,
    models_of_versions,
)
from adapters.fine_tuned_models import model_id as fine_tuned_model_id
from finetune.admission import check_file_data
from finetune.config import TrainingConfig
from finetune.errors import DatasetError
from serving.deps import MAX_ROW_ID, SessionDep, SettingsDep, UserDep
from serving.errors import ApiError
from serving.fine_tuning_schemas import (
    FineTuningEventPublic,
    FineTuningHyperparameters,
    FineTuningHyperparametersPublic,
    FineTuningJobCreate,
    FineTuningJobError,
    FineTuningJobPublic,
    FineTuningJobTailor,
)
from serving.request_text import printable
from serving.routes.fine_tunes import job_hyperparameters, job_model
from serving.schemas import ListPublic
from serving.settings import Settings
from serving.user_schemas import Hyperparameters
from storage.repositories import JobRepository, TrainingFileRepository
from storage.tables import AdapterKind, FineTuneJob, JobEvent, JobState

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])

EVENT_PREFIX = "ftevent_"
# Body fields of OpenAI's that ask for nothing when empty; anything else in them is refused.
_EMPTY_OK: dict[str, tuple[object, ...]] = {"metadata": ({}, None), "integrations": ([], None)}
KNOWN_HYPERPARAMETERS = "n_epochs, batch_size and learning_rate_multiplier"
Level = Literal["info", "warn", "error"]


# Checking the body ---------------------------------------------------------------------


def _unsupported(name: str, why: str) -> ApiError:
    return ApiError(400, f"{name}: {why}", code="unsupported_parameter")


def _refuse_unknown(extra: Mapping[str, Any] | None, where: str, why: str) -> None:
    for name in extra or {}:
        raise _unsupported(f"{where}{printable(name)}", why)


def chosen_hyperparameters(body: FineTuningJobCreate) -> FineTuningHyperparameters:
    """The body's hyperparameters, from ``hyperparameters`` or ``method.supervised``; a
    400 naming the first field Tailor does not take."""
    for name, value in (body.model_extra or {}).items():
        if name in _EMPTY_OK and value in _EMPTY_OK[name]:
            continue
        if name in _EMPTY_OK:
            raise _unsupported(name, "not kept by Tailor; send it empty or leave it out")
        raise _unsupported(printable(name), "unknown parameter")
    given = body.hyperparameters
    if body.method is not None:
        if body.method.type != "supervised":
            raise _unsupported(
                "method.type", f"Tailor trains supervised fine-tunes only, not {body.method.type!r}"
            )
        _refuse_unknown(body.method.model_extra, "method.", "unknown parameter")
        supervised = body.method.supervised
        if supervised is not None:
            _refuse_unknown(supervised.model_extra, "method.supervised.", "unknown parameter")
            if supervised.hyperparameters is not None:
                if given is not None:
                    raise _unsupported(
                        "method.supervised.hyperparameters",
                        "give the hyperparameters once, here or as hyperparameters",
                    )
                given = supervised.hyperparameters
    given = given or FineTuningHyperparameters()
    _refuse_unknown(
        given.model_extra,
        "hyperparameters.",
        f"unknown hyperparameter; Tailor takes {KNOWN_HYPERPARAMETERS}",
    )
    return given


def tailor_hyperparameters(
    given: FineTuningHyperparameters, seed: int | None, settings: Settings
) -> dict[str, Any]:
    """What the job row stores, in Tailor's names, checked as ``/v1/fine-tunes`` checks."""
    stored = job_hyperparameters(
        Hyperparameters(
            epochs=None if given.n_epochs == "auto" else given.n_epochs,
            batch_size=None if given.batch_size == "auto" else given.batch_size,
        ),
        settings,
    )
    if given.learning_rate_multiplier != "auto":
        stored["learning_rate_multiplier"] = float(given.learning_rate_multiplier)
    if seed is not None:
        stored["seed"] = seed
    return stored


def base_model_of_job(session: Session, settings: Settings, requested: str, user_id: str) -> str:
    if looks_fine_tuned(requested):
        if find_fine_tuned_model(session, name=requested, user_id=user_id) is None:
            raise ApiError(404, f"the model {requested!r} does not exist", code="model_not_found")
        raise _unsupported(
            "model",
            "a fine-tune starts from a base model (each job trains a new version of your "
            "specialist); name the base model of this one",
        )
    return job_model(session, settings, requested)


# Answers ------------------------------------------------------------------------------


def _seconds(value: Any) -> int | None:
    return None if value is None else int(value.timestamp())


def job_public(
    job: FineTuneJob, *, fine_tuned_model: str | None, trained_tokens: int | None
) -> FineTuningJobPublic:
    hyperparameters = job.hyperparameters
    failed = job.state is JobState.FAILED
    assert job.user_id is not None
    return FineTuningJobPublic(
        id=job.id,
        created_at=int(job.created_at.timestamp()),
        error=(
            FineTuningJobError(code="training_failed", message=job.error or "the job failed")
            if failed
            else None
        ),
        fine_tuned_model=fine_tuned_model,
        finished_at=_seconds(job.finished_at),
        hyperparameters=FineTuningHyperparametersPublic(
            n_epochs=hyperparameters.get("epochs", "auto"),
            batch_size=hyperparameters.get("batch_size", "auto"),
            learning_rate_multiplier=hyperparameters.get("learning_rate_multiplier", "auto"),
        ),
        model=job.base_model_id,
        organization_id=job.user_id,
        seed=int(hyperparameters.get("seed", TrainingConfig().seed)),
        status=job.state,
        trained_tokens=trained_tokens if job.state is JobState.SUCCEEDED else None,
        training_file=job.training_file_id,
        validation_file=job.validation_file_id,
        suffix=job.suffix,
        tailor=FineTuningJobTailor(
            adapter_id=job.adapter_id,
            result_version_id=job.result_version_id,
            outcome=job.outcome if job.outcome in ("promoted", "held_back") else None,
            outcome_reason=job.outcome_reason,
            attempt=job.attempt,
        ),
    )


def jobs_public(
    session: Session, jobs: Sequence[FineTuneJob], *, user_id: str
) -> list[FineTuningJobPublic]:
    """The jobs in OpenAI's shape, their models and token counts read in two queries."""
    models = models_of_versions(
        session,
        user_id=user_id,
        version_ids=[j.result_version_id for j in jobs if j.result_version_id],
    )
    trained = JobRepository(session).latest_payloads(
        job_ids=[j.id for j in jobs if j.state is JobState.SUCCEEDED], kind="trained"
    )
    return [
        job_public(
            job,
            fine_tuned_model=models.get(job.result_version_id or ""),
            trained_tokens=_int_or_none(trained.get(job.id, {}).get("tokens")),
        )
        for job in jobs
    ]


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if isinstance(value, int | float) else "n/a"


def event_message(event: JobEvent, job: FineTuneJob) -> tuple[Level, str]:
    """(level, message) of one of Tailor's job events, for a person to read."""
    p = event.payload
    kind = event.kind
    if kind == "started":
        return "info", f"Fine-tuning job started (attempt {p.get('attempt', event.attempt)})"
    if kind == "resumed":
        return "info", f"Resumed: version {p.get('version_id')} was already trained"
    if kind == "dataset":
        return "info", (
            f"Training data: {p.get('conversations')} conversations "
            f"(train {p.get('train')}, validation {p.get('validation')}, test {p.get('test')}; "
            f"{p.get('left_out_too_long', 0)} left out as too long)"
        )
    if kind == "plan":
        return "info", (
            f"Training plan: {p.get('steps')} steps at batch size {p.get('batch_size')} "
            f"({p.get('epochs')} epochs), learning rate {_number(p.get('learning_rate'))}"
        )
    if kind == "progress":
        message = (
            f"Step {p.get('step')}/{p.get('total_steps')}: training loss={_number(p.get('loss'))}"
        )
        if p.get("validation_loss") is not None:
            message += f", validation loss={_number(p.get('validation_loss'))}"
        return "info", message
    if kind == "trained":
        return "info", (
            f"Training done: {p.get('steps')} steps, best validation loss "
            f"{_number(p.get('best_validation_loss'))} at step {p.get('best_step')}"
        )
    if kind == "evaluating":
        return "info", f"Evaluating: {p.get('stage')} ({p.get('done')}/{p.get('total')})"
    if kind == "evaluation":
        nll = p.get("nll_per_token") or {}
        return "info", (
            f"Evaluation: NLL per token on held-out conversations base "
            f"{_number(nll.get('base'))}, candidate {_number(nll.get('candidate'))}; "
            f"verdict {p.get('verdict')}"
        )
    if kind == "registered":
        return "info", f"Version {p.get('version')} registered ({p.get('version_id')})"
    if kind == "promoted":
        return "info", f"New fine-tuned model created: {promoted_model_id(job, p)}"
    if kind == "not_promoted":
        reasons = p.get("reasons") or [p.get("reason")]
        return "warn", "The new version was held back: " + "; ".join(str(r) for r in reasons)
    if kind == "error":
        again = " (it will be retried)" if p.get("retryable") else ""
        return "error", f"Attempt {event.attempt} failed: {p.get('error')}{again}"
    if kind == "cancelled":
        return "info", "Fine-tuning job cancelled"
    return "info", kind


def promoted_model_id(job: FineTuneJob, payload: Mapping[str, Any]) -> str:
    return fine_tuned_model_id(job.base_model_id, job.suffix, str(payload.get("version_id")))


def event_public(event: JobEvent, job: FineTuneJob) -> FineTuningEventPublic:
    level, message = event_message(event, job)
    data = dict(event.payload)
    if event.kind == "progress":
        # OpenAI's metric names beside Tailor's own.
        data |= {"train_loss": data.get("loss"), "valid_loss": data.get("validation_loss")}
    return FineTuningEventPublic(
        id=f"{EVENT_PREFIX}{event.id}",
        created_at=int(event.created_at.timestamp()),
        level=level,
        message=message,
        type="metrics" if event.kind == "progress" else "message",
        data=data,
    )


def event_cursor(after: str | None) -> int | None:
    """The event id an ``after`` names (``ftevent_12``, or ``12``)."""
    if after is None:
        return None
    number = after.removeprefix(EVENT_PREFIX)
    if not (number.isascii() and number.isdigit()) or int(number) > MAX_ROW_ID:
        raise ApiError(
            422,
            f"query.after: not an event id of this API ({printable(after)!r})",
            code="invalid_body",
        )
    return int(number)


# Routes -------------------------------------------------------------------------------


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": FineTuningJobPublic, "description": "The job queued before with this key"}
    },
)
def create_job(
    body: FineTuningJobCreate,
    user: UserDep,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> FineTuningJobPublic:
    assert user.user_id is not None
    user_id = user.user_id
    given = chosen_hyperparameters(body)
    model_id = base_model_of_job(session, settings, body.model, user_id)
    hyperparameters = tailor_hyperparameters(given, body.seed, settings)
    files = TrainingFileRepository(session)
    # Locked until the job commits: a delete of the file waits, then sees the job.
    training_file = files.get_for_user(file_id=body.training_file, user_id=user_id, lock=True)
    validation_file = (
        None
        if body.validation_file is None
        else files.get_for_user(file_id=body.validation_file, user_id=user_id, lock=True)
    )
    jobs = JobRepository(session)
    replayed = (
        jobs.by_idempotency_key(user_id=user_id, key=idempotency_key)
        if idempotency_key is not None
        else None
    )
    if replayed is None:
        try:
            check_file_data(
                session,
                user_id=user_id,
                base_model_id=model_id,
                training_file=training_file,
                validation_file=validation_file,
                hyperparameters=hyperparameters,
            )
        except DatasetError as exc:
            raise ApiError(422, str(exc), code="invalid_training_data") from None
    job, created = jobs.create(
        kind=AdapterKind.SPECIALIST,
        base_model_id=model_id,
        user_id=user_id,
        hyperparameters=hyperparameters,
        idempotency_key=idempotency_key,
        training_file_id=training_file.id,
        validation_file_id=None if validation_file is None else validation_file.id,
        suffix=body.suffix,
    )
    session.commit()
    if not created:
        response.status_code = status.HTTP_200_OK
    return jobs_public(session, [job], user_id=user_id)[0]


@router.get("")
def list_jobs(
    user: UserDep,
    session: SessionDep,
    after: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ListPublic[FineTuningJobPublic]:
    """Every job of the caller's, newest first (those of ``/v1/fine-tunes`` too)."""
    assert user.user_id is not None
    rows = JobRepository(session).list_page(user_id=user.user_id, limit=limit + 1, after=after)
    return ListPublic(
        data=jobs_public(session, rows[:limit], user_id=user.user_id), has_more=len(rows) > limit
    )


@router.get("/{job_id}")
def get_job(job_id: str, user: UserDep, session: SessionDep) -> FineTuningJobPublic:
    assert user.user_id is not None
    job = JobRepository(session).get_for_user(job_id=job_id, user_id=user.user_id)
    return jobs_public(session, [job], user_id=user.user_id)[0]


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, user: UserDep, session: SessionDep) -> FineTuningJobPublic:
    assert user.user_id is not None
    job = JobRepository(session).request_cancel(job_id=job_id, user_id=user.user_id)
    session.commit()
    return jobs_public(session, [job], user_id=user.user_id)[0]


@router.get("/{job_id}/events")
def job_events(
    job_id: str,
    user: UserDep,
    session: SessionDep,
    after: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ListPublic[FineTuningEventPublic]:
    """The job's events newest first, as OpenAI lists them; ``after`` pages to older ones."""
    assert user.user_id is not None
    jobs = JobRepository(session)
    job = jobs.get_for_user(job_id=job_id, user_id=user.user_id)
    events = jobs.list_events_newest_first(
        job_id=job.id, before_id=event_cursor(after), limit=limit + 1
    )
    return ListPublic(
        data=[event_public(e, job) for e in events[:limit]], has_more=len(events) > limit
    )
