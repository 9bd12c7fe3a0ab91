"""What must hold before the service takes traffic.

Each check names what it looked at and returns "ok" or a reason, so that an
operator reading ``/readyz`` sees what to fix. A check never raises: a broken
dependency is a reason in the answer, never a 500 of the probe.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError

from serving.runtime import ModelRuntime
from serving.schemas import ReadinessPublic
from serving.services import Services
from serving.worker_supervisor import WorkerSupervisor
from storage.errors import StorageError
from storage.repositories import BaseModelRepository

MODELS_UNKNOWN = "unknown: the database is unavailable"


def _describe_sql_error(exc: SQLAlchemyError) -> str:
    # The driver's first line says what failed; the statement and its
    # parameters stay out of a public answer.
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {lines[0] if lines else 'no detail'}"


def _check_reachable(ping: Callable[[], None]) -> str:
    try:
        ping()
    except StorageError as exc:
        return str(exc)
    except SQLAlchemyError as exc:
        # Not an outage as storage counts them (e.g. no pooled connection
        # came free in time), but the probe answers rather than fails.
        return _describe_sql_error(exc)
    return "ok"


def _check_models(services: Services) -> str:
    try:
        with services.database.session() as session:
            models = BaseModelRepository(session).list_all()
    except StorageError as exc:
        return str(exc)
    except SQLAlchemyError as exc:
        # The database answers but the query fails: e.g. a schema that was
        # never migrated.
        return f"cannot read the base models: {_describe_sql_error(exc)}"
    if not models:
        return "no base model is registered; run `tailor models prepare`"
    store = services.settings.storage.model_store_dir
    missing = [m.id for m in models if not (store / m.path).is_dir()]
    if missing:
        return f"missing from the model store: {', '.join(missing)}"
    return "ok"


def _check_engines(runtime: ModelRuntime) -> str:
    if runtime.load_error is not None:
        return runtime.load_error
    if not runtime.loaded.is_set():
        return "loading the base models"
    return "ok"


def _check_workers(workers: WorkerSupervisor) -> str:
    problems = workers.problems()
    return "; ".join(problems) if problems else "ok"


# Reported, but no reason to take this process out of traffic: a fine-tune
# worker serves no request, and its jobs wait in the queue until it is back.
ADVISORY_CHECKS = frozenset({"workers"})


def check_readiness(services: Services, runtime: ModelRuntime | None) -> ReadinessPublic:
    database = _check_reachable(services.database.ping)
    # Not asked of a database that just failed: the answer is known, and a
    # second connect would double the probe's wait on an unreachable host.
    models = _check_models(services) if database == "ok" else MODELS_UNKNOWN
    checks = {
        "database": database,
        "cache": _check_reachable(services.cache.ping),
        "models": models,
    }
    if runtime is not None:
        checks["engines"] = _check_engines(runtime)
        if runtime.workers is not None:
            checks["workers"] = _check_workers(runtime.workers)
    ready = all(result == "ok" for name, result in checks.items() if name not in ADVISORY_CHECKS)
    return ReadinessPublic(status="ready" if ready else "not_ready", checks=checks)
