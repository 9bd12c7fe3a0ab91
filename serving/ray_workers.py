"""Fine-tune workers on Ray: one actor per worker, holding a GPU when asked to.

``tailor serve --ray`` starts ``TAILOR_FINETUNE_WORKERS`` of them beside the
Serve application. Each runs the same loop as ``tailor worker`` (the job queue
in SQL is what coordinates them, not Ray), so a worker actor that dies only
loses its lease: the job is re-leased by another worker.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from serving.settings import Settings

ACTOR_PREFIX = "tailor-finetune-worker-"


class FinetuneWorkerActor:
    """Runs ``finetune.worker`` in a Ray actor until ``stop`` is called."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._stop = threading.Event()

    def run(self) -> str:
        from finetune.worker import worker_from_settings
        from serving.services import Services
        from serving.settings import load_settings

        logging.basicConfig(level=logging.INFO)
        settings = load_settings()
        services = Services.open(settings)
        try:
            worker_from_settings(
                settings.finetune,
                services.adapters,
                model_store_dir=settings.storage.model_store_dir,
                name=self._name,
            ).run(self._stop)
        finally:
            services.close()
        return self._name

    def stop(self) -> None:
        self._stop.set()


def finetune_actor_options(settings: Settings, index: int) -> dict[str, Any]:
    return {
        "name": f"{ACTOR_PREFIX}{index}",
        "num_gpus": settings.finetune.gpus_per_worker,
        "num_cpus": 1,
        # run() blocks for the actor's life; stop() must still get through.
        "max_concurrency": 2,
        # A worker that dies (OOM, a crashed node) comes back, and its run()
        # call is sent again to the new process; the job it held is freed by
        # the lease sweeper of `tailor serve --ray` when its lease runs out.
        "max_restarts": -1,
        "max_task_retries": -1,
    }


def start_finetune_actors(settings: Settings) -> list[Any]:
    """Start the worker actors on the connected Ray cluster; returns their handles."""
    import ray

    actor_class: Any = ray.remote(FinetuneWorkerActor)
    actors = []
    for index in range(settings.finetune.workers):
        options = finetune_actor_options(settings, index)
        actor = actor_class.options(**options).remote(options["name"])
        actor.run.remote()
        actors.append(actor)
    return actors


def stop_finetune_actors(actors: list[Any], *, timeout_seconds: float = 30.0) -> None:
    import ray

    for actor in actors:
        actor.stop.remote()
    for actor in actors:
        try:
            ray.get(actor.__ray_terminate__.remote(), timeout=timeout_seconds)
        except Exception:
            ray.kill(actor)
