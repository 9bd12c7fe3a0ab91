"""Base models registered from the model store."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.clock import utc_now
from storage.errors import NotFound
from storage.tables import BaseModelRow


class BaseModelRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def upsert(
        self,
        *,
        model_id: str,
        architecture: str,
        path: str,
        sha256: str,
        source: str,
        source_sha256: str,
        dtype: str,
        size_bytes: int,
        parameter_count: int,
        context_length: int,
        chat_template: str | None,
        cost_per_million_tokens: float,
    ) -> BaseModelRow:
        """Register a model, or refresh its metadata if it is already known."""
        if cost_per_million_tokens < 0:
            raise ValueError("a cost cannot be negative")
        model = self.session.get(BaseModelRow, model_id)
        if model is None:
            model = BaseModelRow(id=model_id, created_at=utc_now(), enabled=True)
            self.session.add(model)
        model.architecture = architecture
        model.path = path
        model.sha256 = sha256
        model.source = source
        model.source_sha256 = source_sha256
        model.dtype = dtype
        model.size_bytes = size_bytes
        model.parameter_count = parameter_count
        model.context_length = context_length
        model.chat_template = chat_template
        model.cost_per_million_tokens = cost_per_million_tokens
        model.updated_at = utc_now()
        self.session.flush()
        return model

    def get(self, *, model_id: str) -> BaseModelRow:
        model = self.session.get(BaseModelRow, model_id)
        if model is None:
            raise NotFound(f"base model {model_id} not found")
        return model

    def list_all(self, *, enabled_only: bool = True) -> list[BaseModelRow]:
        query = select(BaseModelRow).order_by(BaseModelRow.parameter_count, BaseModelRow.id)
        if enabled_only:
            query = query.where(BaseModelRow.enabled.is_(True))
        return list(self.session.scalars(query))

    def set_enabled(self, *, model_id: str, enabled: bool) -> BaseModelRow:
        model = self.get(model_id=model_id)
        model.enabled = enabled
        self.session.flush()
        return model
