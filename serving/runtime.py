"""The models this process serves, the router in front of them, and the caches
that keep each replica's experts current."""

from __future__ import annotations

import logging
import threading

from adapters.expert_sets import CachedExpertSets, ExpertSet
from adapters.invalidation import InvalidationListener
from adapters.registry import InvalidationEvent
from router import Candidate, DefaultModelRouter, Router
from serving.model_host import HostedModel, load_hosted_model
from serving.services import Services
from storage.repositories import BaseModelRepository

logger = logging.getLogger(__name__)


class ModelRuntime:
    def __init__(self, services: Services, *, router: Router | None = None) -> None:
        self.services = services
        self.router: Router = router or DefaultModelRouter(services.settings.default_model)
        self.models: dict[str, HostedModel] = {}
        self.candidates: list[Candidate] = []
        self.loaded = threading.Event()
        self.load_error: str | None = None
        self.expert_sets = CachedExpertSets(self._resolve)
        self._listener = InvalidationListener(
            services.cache, [self.expert_sets.clear, self._invalidate_slots]
        )
        self._loader: threading.Thread | None = None

    def _resolve(self, base_model_id: str, user_id: str | None, personalize: bool) -> ExpertSet:
        return self.services.adapters.expert_set(
            base_model_id=base_model_id, user_id=user_id, personalize=personalize
        )

    def _invalidate_slots(self, event: InvalidationEvent | None) -> None:
        for hosted in list(self.models.values()):
            hosted.slots.invalidate(event)

    def start(self) -> None:
        """Subscribe to invalidations, then load every model in the background."""
        self._listener.start()
        self._loader = threading.Thread(target=self._load_all, name="model-loader", daemon=True)
        self._loader.start()

    def _load_all(self) -> None:
        settings = self.services.settings
        try:
            with self.services.database.session() as session:
                records = BaseModelRepository(session).list_all()
            for record in records:
                self.models[record.id] = load_hosted_model(
                    model_id=record.id,
                    path=settings.model_store_dir / record.path,
                    context_length=record.context_length,
                    registry=self.services.adapters,
                    settings=settings,
                )
                self.candidates.append(
                    Candidate(
                        model=record.id,
                        cost_per_million_tokens=record.cost_per_million_tokens,
                        chat=record.chat_template is not None,
                    )
                )
            self.loaded.set()
        except Exception as exc:
            logger.exception("loading the base models failed")
            self.load_error = f"loading the base models failed: {exc}"

    def stop(self) -> None:
        self._listener.stop()
        if self._loader is not None:
            self._loader.join(timeout=60)
        for hosted in self.models.values():
            hosted.engine.stop()
