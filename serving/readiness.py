"""What must hold before the service takes traffic.

Each check names what it looked at and returns "ok" or a reason, so that an
operator reading ``/readyz`` sees what to fix.
"""

from __future__ import annotations

from collections.abc import Callable

from serving.runtime import ModelRuntime
from serving.schemas import ReadinessPublic
from serving.services import Services
from storage.errors import StorageError
from storage.repositories import BaseModelRepository


def _check_reachable(ping: Callable[[], None]) -> str:
    try:
        ping()
    except StorageError as exc:
        return str(exc)
    return "ok"


def _check_models(services: Services) -> str:
    try:
        with services.database.session() as session:
            models = BaseModelRepository(session).list_all()
    except StorageError as exc:
        return str(exc)
    if not models:
        return "no base model is registered; run `tailor models prepare`"
    store = services.settings.model_store_dir
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


def check_readiness(services: Services, runtime: ModelRuntime | None) -> ReadinessPublic:
    checks = {
        "database": _check_reachable(services.database.ping),
        "cache": _check_reachable(services.cache.ping),
        "models": _check_models(services),
    }
    if runtime is not None:
        checks["engines"] = _check_engines(runtime)
    ready = all(result == "ok" for result in checks.values())
    return ReadinessPublic(status="ready" if ready else "not_ready", checks=checks)
