"""Tailor on Ray Serve: one deployment per base model hosting its engine,
behind an ingress deployment that runs the same FastAPI app as the embedded
mode, reaching the engines through ``RayBackend`` instead of ``LocalBackend``.

Requests that carry experts are sent with their expert set as Serve's
multiplexed model id, so Serve prefers a replica that already holds those
adapters in its slots.

``build_app`` is the application builder (``import_path`` of the Serve
config); ``serve_config`` writes that config, from the same settings, for
``serve deploy``. The Helm chart cannot run Python: it embeds
``fixed_serve_config`` (``helm/tailor/files/serve-config.yaml``, written by
``python -m serving.helm_chart``) and fills in the rest from its values as
``serve_config`` does; ``tests/test_helm_chart.py`` holds both to this code.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from models.device import device_name
from serving.engine.engine import EngineOverloaded
from serving.engine.requests import Event, GenerationRequest
from serving.settings import ENV_PREFIX, RayModelDeployment, Settings, load_settings

APP_NAME = "tailor"
IMPORT_PATH = "serving.ray_serve:build_app"
INGRESS_NAME = "TailorIngress"
# How many expert sets Serve remembers per replica for routing; which adapters
# stay resident is the replica's slot cache's business.
MULTIPLEXED_SETS_PER_REPLICA = 256
# Settings that must never be written into a Serve config (they come from a
# Secret in the deployment, or the replica's own environment).
SECRET_SETTINGS = ("ADMIN_KEY", "DATABASE_URL", "REDIS_URL", "SESSION_SECRET")


def model_deployment_name(model_id: str) -> str:
    return f"model-{model_id}"


class _RayStream:
    def __init__(self, generator: DeploymentResponseGenerator[Any]) -> None:
        self._generator = generator

    async def _events(self) -> AsyncIterator[Event]:
        try:
            async for event in self._generator:
                yield event
        except BackPressureError as exc:
            raise EngineOverloaded(str(exc)) from None

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    def cancel(self) -> None:
        self._generator.cancel()  # type: ignore[no-untyped-call]


class RayBackend:
    """Engines on Ray Serve replicas, one deployment per base model."""

    def __init__(self, handles: Mapping[str, DeploymentHandle[Any]]) -> None:
        self._handles = handles

    def start(self, model_id: str, request: GenerationRequest) -> _RayStream:
        handle = self._handles[model_id].options(stream=True)
        if request.experts is not None:
            handle = handle.options(multiplexed_model_id=request.experts.key)
        response = handle.generate.remote(request)
        assert isinstance(response, DeploymentResponseGenerator)  # stream=True gives one
        return _RayStream(response)


class ModelServer:
    """A replica: one base model's engine and its adapter slots."""

    def __init__(self, model_id: str) -> None:
        from adapters.invalidation import InvalidationListener
        from serving.model_host import load_hosted_model
        from serving.services import Services
        from storage.repositories import BaseModelRepository

        settings = load_settings()
        self._services = Services.open(settings, migrate_schema=False)
        with self._services.database.session() as session:
            record = BaseModelRepository(session).get(model_id=model_id)
        self._hosted = load_hosted_model(
            model_id=record.id,
            path=settings.storage.model_store_dir / record.path,
            context_length=record.context_length,
            registry=self._services.adapters,
            settings=settings,
        )
        self._listener = InvalidationListener(self._services.cache, [self._hosted.slots.invalidate])
        self._listener.start()

    @serve.multiplexed(max_num_models_per_replica=MULTIPLEXED_SETS_PER_REPLICA)  # type: ignore[untyped-decorator]
    async def _expert_set(self, key: str) -> str:
        # Marks the set as held here; the slots fill when the request is admitted.
        return key

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        if request.experts is not None:
            await self._expert_set(serve.get_multiplexed_model_id())
        handle = self._hosted.engine.submit(request, loop=asyncio.get_running_loop())
        try:
            async for event in handle.events():
                yield event
        finally:
            handle.cancel()

    def __del__(self) -> None:
        listener = getattr(self, "_listener", None)
        if listener is not None:
            listener.stop()


def served_model_ids(settings: Settings) -> list[str]:
    from serving.services import Services
    from storage.repositories import BaseModelRepository

    services = Services.open(settings, migrate_schema=False)
    try:
        with services.database.session() as session:
            ids = [m.id for m in BaseModelRepository(session).list_all()]
    finally:
        services.close()
    return [i for i in ids if settings.engine.models is None or i in settings.engine.models]


def build_ingress_app() -> Any:
    """The FastAPI app of the ingress replica (evaluated on the replica)."""
    from serving.app import create_app
    from serving.runtime import ModelRuntime
    from serving.services import Services

    settings = load_settings()
    services = Services.open(settings, migrate_schema=False)
    handles = {
        model_id: serve.get_deployment_handle(model_deployment_name(model_id), app_name=APP_NAME)
        for model_id in served_model_ids(settings)
    }
    runtime = ModelRuntime(services, backend=RayBackend(handles))
    runtime.start()  # also started by the app's lifespan; starting twice is a no-op
    return create_app(services, runtime=runtime)


def _wants_gpu(settings: Settings) -> bool:
    return device_name(settings.engine.device).startswith("cuda")


def model_deployment_options(settings: Settings, model_id: str) -> dict[str, Any]:
    """Resources, autoscaling and back-pressure of one model's deployment.

    ``TAILOR_RAY_MODEL_DEPLOYMENTS`` overrides a model's resources and bounds;
    what it leaves out comes from the settings every model shares.
    """
    own = settings.engine.ray_model_deployments.get(model_id, RayModelDeployment())
    num_cpus = settings.engine.ray_num_cpus_per_replica if own.num_cpus is None else own.num_cpus
    if own.num_gpus is None:
        num_gpus: float = 1 if _wants_gpu(settings) else 0
    else:
        num_gpus = own.num_gpus
    min_replicas = 1 if own.min_replicas is None else own.min_replicas
    max_replicas = (
        settings.engine.ray_max_replicas if own.max_replicas is None else own.max_replicas
    )
    return {
        "name": model_deployment_name(model_id),
        "ray_actor_options": {"num_cpus": num_cpus, "num_gpus": num_gpus},
        "autoscaling_config": {
            "min_replicas": min_replicas,
            "max_replicas": max_replicas,
            # Scale out before a replica's batch is full.
            "target_ongoing_requests": max(1, settings.engine.max_batch // 2),
        },
        # A replica takes as many requests as its engine batches; Serve queues
        # the rest up to the engine's own queue size, then refuses (503).
        "max_ongoing_requests": settings.engine.max_batch,
        "max_queued_requests": settings.engine.max_queue,
    }


INGRESS_OPTIONS: dict[str, Any] = {
    "name": INGRESS_NAME,
    # Routing and tokenizing are light; the engines hold the CPUs and GPUs.
    "ray_actor_options": {"num_cpus": 0},
    "num_replicas": 1,
    "max_ongoing_requests": 1000,
}


@serve.ingress(build_ingress_app)
class TailorIngress:
    """The ingress replica: the FastAPI app of ``build_ingress_app``."""

    def __init__(self, *model_deployments: DeploymentHandle[Any]) -> None:
        # Bound so that the model deployments belong to the application; the
        # app itself reaches them by name.
        self._model_deployments = model_deployments


def build_app(args: Mapping[str, Any] | None = None) -> Any:
    """The Serve application: the ingress bound to one deployment per base model."""
    del args  # everything comes from TAILOR_* settings
    settings = load_settings()
    # serve.deployment's stubs do not describe its result when given a class.
    model_server: Any = serve.deployment(ModelServer)
    ingress: Any = serve.deployment(TailorIngress)
    models = [
        model_server.options(**model_deployment_options(settings, m)).bind(m)
        for m in served_model_ids(settings)
    ]
    return ingress.options(**INGRESS_OPTIONS).bind(*models)


def tailor_environment(settings: Settings, *, include_secrets: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    if not include_secrets:
        env = {k: v for k, v in env.items() if k.removeprefix(ENV_PREFIX) not in SECRET_SETTINGS}
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def fixed_serve_config() -> dict[str, Any]:
    """The part of the Serve config that no setting changes.

    ``serve_config`` adds the port, the environment and the model deployments;
    the Helm chart embeds this part as it is and adds the same from its values.
    """
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0"},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": IMPORT_PATH,
                "deployments": [copy.deepcopy(INGRESS_OPTIONS)],
            }
        ],
    }


def serve_config(settings: Settings, model_ids: list[str]) -> dict[str, Any]:
    """The ``serve deploy`` config for these settings (no secrets in it)."""
    fixed = fixed_serve_config()
    (application,) = fixed["applications"]
    return {
        **fixed,
        "http_options": {**fixed["http_options"], "port": settings.server.port},
        "applications": [
            {
                **{key: value for key, value in application.items() if key != "deployments"},
                "runtime_env": {
                    "env_vars": {
                        **tailor_environment(settings, include_secrets=False),
                        # Compact, as the chart's toJson writes it.
                        "TAILOR_MODELS": json.dumps(model_ids, separators=(",", ":")),
                    }
                },
                "deployments": [
                    *application["deployments"],
                    *(model_deployment_options(settings, model_id) for model_id in model_ids),
                ],
            }
        ],
    }
