"""Registers the prepared models of the model store as base models in SQL, with their prices.

The bridge from the files of ``models.store`` to the ``base_models`` rows that routing,
serving and fine-tuning read: ``tailor models prepare`` registers what it prepared, and
``tailor serve`` what it finds. A model's price is decided here
(``price_per_million_tokens``: at registration, and for ``tailor models list``);
routing reads the stored column. Which registered models this deployment serves
(``TAILOR_MODELS``) is decided here too (``served_models``), for the model host, the
router's candidates and the fine-tune routes alike.

It takes what it needs of the settings as plain values (the model store's directory,
``ModelPrices``), never the settings object, which lives above this layer
(``serving/settings.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from models.store import PreparedModel
from storage.repositories import BaseModelRepository
from storage.tables import BaseModelRow


@dataclass(frozen=True)
class ModelPrices:
    """The configured prices per 1M tokens: ``per_model`` (``TAILOR_MODEL_COSTS``) and
    the price of a 1B-parameter model (``TAILOR_COST_PER_BILLION_PARAMETERS``)."""

    per_model: Mapping[str, float] = field(default_factory=dict)
    per_billion_parameters: float = 1.0


def price_per_million_tokens(model_id: str, parameter_count: int, prices: ModelPrices) -> float:
    """A configured price, else one proportional to the parameter count.

    The proportional default reflects that decode cost scales with the
    weights read per token; operators with real prices configure them.
    """
    if model_id in prices.per_model:
        return prices.per_model[model_id]
    return parameter_count / 1e9 * prices.per_billion_parameters


def served_models(
    registered: Sequence[BaseModelRow], only: Sequence[str] | None
) -> list[BaseModelRow]:
    """The registered base models this deployment serves: ``only`` (``TAILOR_MODELS``)
    when set, else every one. A model it does not serve is one it cannot route to,
    answer with or fine-tune for."""
    if only is None:
        return list(registered)
    return [model for model in registered if model.id in only]


def register_prepared_models(
    session: Session, prepared: Sequence[PreparedModel], *, store_dir: Path, prices: ModelPrices
) -> list[BaseModelRow]:
    """Upserts a ``base_models`` row per prepared model, its path relative to ``store_dir``
    (the model store) when it lies inside it, priced by ``prices``."""
    repository = BaseModelRepository(session)
    store = store_dir.resolve()
    registered = []
    for model in prepared:
        path = Path(model.path).resolve()
        registered.append(
            repository.upsert(
                model_id=model.id,
                architecture=model.architecture,
                path=str(path.relative_to(store)) if path.is_relative_to(store) else str(path),
                sha256=model.sha256,
                source=model.source,
                source_sha256=model.source_sha256,
                dtype=model.dtype,
                size_bytes=model.size_bytes,
                parameter_count=model.parameter_count,
                context_length=model.context_length,
                chat_template=model.chat_template,
                cost_per_million_tokens=price_per_million_tokens(
                    model.id, model.parameter_count, prices
                ),
            )
        )
    return registered
