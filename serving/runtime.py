"""The models this process serves, the router in front of them, and the caches
that keep each replica's experts current.

The router is built once the models are known: MiniLM is loaded, and the
ratings are replayed from the stored feedback, then kept current by a thread
that picks up feedback other processes stored.

In the embedded mode the engines run here (``LocalBackend``). Behind Ray
Serve, this process only routes and tokenizes; the engines are replicas
reached through the backend given to it, and each replica keeps its own
adapter slots current.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from adapters.expert_sets import CachedExpertSets, CachedPinnedSets, ExpertSet
from adapters.fine_tuned_models import find_fine_tuned_model, pinned_expert_set
from adapters.invalidation import InvalidationListener
from adapters.invalidation_event import InvalidationEvent
from models.catalog import served_models
from router import Candidate, DefaultModelRouter, Router
from router.config import RouterConfig
from router.eagle_router import EagleRouter
from router.load import LoadTracker
from router.quality_estimate import EstimatorConfig
from router.query_embedder import Embedder, OnnxQueryEmbedder, use_one_blas_thread
from router.snapshot import load_snapshot, save_snapshot
from router.state_sync import relearn_lengths, sync_feedback
from serving.backend import GenerationBackend, LocalBackend
from serving.engine.engine import Engine
from serving.generation_defaults import GenerationDefaults
from serving.generation_defaults import resolve as resolve_generation_defaults
from serving.model_host import HostedModel, enforced_context_length, load_hosted_model
from serving.services import Services
from serving.worker_supervisor import WorkerSupervisor
from storage.repositories import BaseModelRepository, UserRepository
from storage.tables import BaseModelRow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """What the API needs of a base model to prepare requests for it."""

    model_id: str
    tokenizer: Any
    context_length: int
    has_chat_template: bool
    # For the sampling fields a request leaves out.
    generation_defaults: GenerationDefaults


class ModelRuntime:
    def __init__(
        self,
        services: Services,
        *,
        router: Router | None = None,
        backend: GenerationBackend | None = None,
        embedder: Embedder | None = None,
        workers: WorkerSupervisor | None = None,
    ) -> None:
        self.services = services
        # The fine-tune worker processes this process supervises (embedded mode),
        # for /readyz and /metrics; None where workers run elsewhere.
        self.workers = workers
        settings = services.settings
        # Until the learning router is built (with the models), `auto` is refused
        # as "not ready" anyway; this one only answers if a caller skips that check.
        self.router: Router = router or DefaultModelRouter(settings.router.default_model)
        self._build_router = router is None
        self._embedder = embedder
        capacity = settings.engine.max_batch * (
            1 if backend is None else settings.engine.ray_max_replicas
        )
        self.load = LoadTracker(
            default_capacity=capacity, ticket_lifetime=settings.engine.request_timeout_seconds + 60
        )
        self.models: dict[str, ServedModel] = {}
        # Engines running in this process (none when a remote backend serves).
        self.local: dict[str, HostedModel] = {}
        self._remote = backend
        self._engines: dict[str, Engine] = {}
        self.backend: GenerationBackend = backend or LocalBackend(self._engines)
        self.candidates: list[Candidate] = []
        self.loaded = threading.Event()
        self.load_error: str | None = None
        self.expert_sets = CachedExpertSets(self._resolve)
        # The sets fine-tuned model ids (ft:...) pin, one SQL read per id and TTL.
        self.pinned_sets = CachedPinnedSets(self._resolve_pinned)
        self._listener = InvalidationListener(
            services.cache,
            [self.expert_sets.clear, self.pinned_sets.clear, self._invalidate_slots],
        )
        self._loader: threading.Thread | None = None
        self._syncer: threading.Thread | None = None
        self._stopping = threading.Event()
        # Serialises feedback sync, rebuilds and snapshots (the sync thread, the feedback
        # and reset routes).
        self._sync_lock = threading.Lock()
        self._reset_epoch: str | None = None
        self._snapshot_at = 0
        # Serialises models added or removed while serving (the admin routes).
        self._models_lock = threading.Lock()

    @property
    def learning_router(self) -> EagleRouter | None:
        """The router when it learns from feedback (not when one was injected)."""
        return self.router if isinstance(self.router, EagleRouter) else None

    def _resolve(self, base_model_id: str, user_id: str | None, personalize: bool) -> ExpertSet:
        return self.services.adapters.expert_set(
            base_model_id=base_model_id, user_id=user_id, personalize=personalize
        )

    def _resolve_pinned(self, model_id: str, user_id: str) -> ExpertSet | None:
        with self.services.database.session() as session:
            model = find_fine_tuned_model(session, name=model_id, user_id=user_id)
            return None if model is None else pinned_expert_set(session, model)

    def _invalidate_slots(self, event: InvalidationEvent | None) -> None:
        for hosted in list(self.local.values()):
            hosted.slots.invalidate(event)

    def start(self) -> None:
        """Subscribe to invalidations, then load every model in the background.

        Idempotent: hosts that do not run the ASGI lifespan call it themselves.
        """
        if self._loader is not None:
            return
        use_one_blas_thread()
        self._listener.start()
        self._loader = threading.Thread(target=self._load_all, name="model-loader", daemon=True)
        self._loader.start()

    def _load_all(self) -> None:
        settings = self.services.settings
        try:
            with self.services.database.session() as session:
                records = BaseModelRepository(session).list_all()
            records = served_models(records, settings.engine.models)
            unknown = sorted(set(settings.engine.generation_defaults) - {r.id for r in records})
            if unknown:
                logger.warning(
                    "TAILOR_GENERATION_DEFAULTS names models not served here: %s",
                    ", ".join(unknown),
                )
            # One after the other: transformers' from_pretrained switches
            # process-wide state (meta-device init) and is not thread-safe.
            loaded = [self._load_one(record) for record in records]
            for record, served in zip(records, loaded, strict=True):
                self.models[record.id] = served
                self.candidates.append(
                    Candidate(
                        model=record.id,
                        cost_per_million_tokens=record.cost_per_million_tokens,
                        chat=record.chat_template is not None,
                    )
                )
            if self._build_router:
                self.router = self._learning_router([r.id for r in records])
                self._syncer = threading.Thread(
                    target=self._sync_feedback, name="router-sync", daemon=True
                )
                self._syncer.start()
            self.loaded.set()
        except Exception as exc:
            logger.exception("loading the base models failed")
            self.load_error = f"loading the base models failed: {exc}"

    def _learning_router(self, models: list[str]) -> EagleRouter:
        """A router with everything learnt so far: the snapshot, then the feedback after it."""
        settings = self.services.settings
        embedder = self._embedder or OnnxQueryEmbedder.load(settings.storage.model_store_dir)
        self._embedder = embedder
        with self.services.database.session() as session:
            reset = UserRepository(session).last_routing_reset()
        epoch = None if reset is None else reset.isoformat()
        started = time.monotonic()
        router = self._new_router(models, embedder)
        restored = load_snapshot(router, settings.storage.router_snapshot_path, reset_epoch=epoch)
        if not restored:
            router = self._new_router(models, embedder)  # nothing half-loaded
        applied = sync_feedback(router, self.services.database)
        learnt = relearn_lengths(router, self.services.database)
        logger.info(
            "router: %s, replayed %d feedback after it, %d output lengths (%.1f s)",
            "snapshot loaded" if restored else "no usable snapshot",
            applied,
            learnt,
            time.monotonic() - started,
        )
        self._reset_epoch = epoch
        self._snapshot_at = router.last_feedback_id if restored else 0
        return router

    def _new_router(self, models: list[str], embedder: Embedder) -> EagleRouter:
        settings = self.services.settings
        return EagleRouter(
            models,
            embedder,
            config=RouterConfig(
                global_weight=settings.router.global_weight,
                neighbours=settings.router.neighbours,
                k=settings.router.k,
                cost_weight=settings.router.cost_weight,
                latency_slo_seconds=settings.router.latency_slo_seconds,
                switch_confidence=settings.router.switch_confidence,
                explore_rate=settings.router.explore_rate,
                explore_max_regret=settings.router.explore_max_regret,
                expert_bonus=settings.router.expert_bonus,
                estimator=EstimatorConfig(
                    user_full_votes=settings.router.user_full_votes,
                    user_max_share=settings.router.user_max_share,
                ),
            ),
            load=self.load,
            default_model=settings.router.default_model,
        )

    def sync_router(self) -> None:
        """Apply feedback stored since the router last looked (here or elsewhere); rebuild
        from scratch when an admin reset a user's influence (what that user taught must be
        forgotten, and a posterior cannot un-learn)."""
        router = self.learning_router
        if router is None:
            return
        with self._sync_lock:
            with self.services.database.session() as session:
                reset = UserRepository(session).last_routing_reset()
            epoch = None if reset is None else reset.isoformat()
            if epoch != self._reset_epoch:
                logger.info("router: a user's routing influence was reset; rebuilding")
                self.router = router = self._learning_router(router.models)
            sync_feedback(router, self.services.database)
            every = self.services.settings.router.snapshot_every
            if every and router.last_feedback_id - self._snapshot_at >= every:
                self._save_snapshot(router)

    def _save_snapshot(self, router: EagleRouter) -> None:
        try:
            self._snapshot_at = save_snapshot(
                router,
                self.services.settings.storage.router_snapshot_path,
                reset_epoch=self._reset_epoch,
            )
        except OSError:
            logger.exception("router: writing the snapshot failed; the next start replays more")

    def _sync_feedback(self) -> None:
        while not self._stopping.wait(self.services.settings.router.sync_seconds):
            try:
                self.sync_router()
            except Exception:  # a database blip must not end the loop
                logger.exception("router: picking up new feedback failed")

    def _load_one(self, record: BaseModelRow) -> ServedModel:
        settings = self.services.settings
        path = settings.storage.model_store_dir / record.path
        if self._remote is None:
            hosted = load_hosted_model(
                model_id=record.id,
                path=path,
                context_length=record.context_length,
                registry=self.services.adapters,
                settings=settings,
            )
            self.local[record.id] = hosted
            self._engines[record.id] = hosted.engine
            tokenizer, context_length = hosted.tokenizer, hosted.context_length
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path)
            context_length = enforced_context_length(record.context_length, settings)
        return ServedModel(
            model_id=record.id,
            tokenizer=tokenizer,
            context_length=context_length,
            has_chat_template=tokenizer.chat_template is not None,
            generation_defaults=resolve_generation_defaults(
                record.id, path, settings.engine.generation_defaults
            ),
        )

    def serve_added(self, record: BaseModelRow) -> bool:
        """Start serving a base model added while this process runs; whether it does now.

        False where it cannot: the models are not loaded yet (or failed to), this
        deployment leaves the model out (``TAILOR_MODELS``), or the engines are remote
        (Ray Serve's deployments are fixed when it starts: the model is served once the
        application is deployed again). Raises what loading the model raises.
        """
        settings = self.services.settings
        if (
            self._remote is not None
            or not self.loaded.is_set()
            or not served_models([record], settings.engine.models)
        ):
            return False
        with self._models_lock:
            if record.id in self.models:
                return True
            served = self._load_one(record)
            # New containers, not changed ones: requests read these without a lock.
            self.models = {**self.models, record.id: served}
            self.candidates = [
                *self.candidates,
                Candidate(
                    model=record.id,
                    cost_per_million_tokens=record.cost_per_million_tokens,
                    chat=record.chat_template is not None,
                ),
            ]
            self._route_over_models()
        logger.info("now serving the added base model %s", record.id)
        return True

    def stop_serving(self, model_id: str) -> None:
        """Stop serving a base model that is being removed: requests still running on it
        end with an error, and the router forgets it."""
        with self._models_lock:
            if model_id not in self.models:
                return
            self.models = {key: value for key, value in self.models.items() if key != model_id}
            self.candidates = [c for c in self.candidates if c.model != model_id]
            self._route_over_models()
            hosted = self.local.pop(model_id, None)
            self._engines.pop(model_id, None)
        if hosted is not None:
            hosted.engine.stop()
        logger.info("stopped serving the base model %s", model_id)

    def _route_over_models(self) -> None:
        """A learning router over the models served now (its state is per model set:
        rebuilt from the snapshot or the feedback, as at start)."""
        if self._build_router:
            with self._sync_lock:
                self.router = self._learning_router(list(self.models))

    def stop(self) -> None:
        self._stopping.set()
        self._listener.stop()
        if self._loader is not None:
            self._loader.join(timeout=60)
        if self._syncer is not None:
            self._syncer.join(timeout=10)
        router = self.learning_router
        if router is not None and self.services.settings.router.snapshot_every:
            with self._sync_lock:
                if router.last_feedback_id > self._snapshot_at:
                    self._save_snapshot(router)
        for hosted in self.local.values():
            hosted.engine.stop()
