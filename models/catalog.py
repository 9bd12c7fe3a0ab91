"""Registers the prepared models of the model store as base models in SQL, with their prices.

The bridge from the files of ``models.store`` to the ``base_models`` rows that routing,
serving and fine-tuning read: ``tailor models prepare`` registers what it prepared,
``tailor models add`` what it added, and ``tailor serve`` what it finds. A model's price
is decided here (``price_per_million_tokens``: at registration, and for ``tailor models
list``); routing reads the stored column.

Adding and removing a model pair a store change with a row change
(``add_base_model``, ``remove_base_model``), in the order that keeps a crash harmless:
an added model's files are complete before its row exists (a row without files would
stop every model from loading at start), and a removed model's row is disabled before
its files go. A removed model's row stays, disabled, because responses, feedback,
adapters and jobs keep naming it; adding a model of the same name enables it again.

Which registered models this deployment serves (``TAILOR_MODELS``) is decided here
too (``served_models``), for the model host, the router's candidates and the
fine-tune routes alike.

It takes what it needs of the settings as plain values (the model store's directory,
``ModelPrices``), never the settings object, which lives above this layer
(``serving/settings.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.errors import ModelNameTaken, ModelRemovalRefused
from models.store import PreparedModel
from models.store.add import (
    AddOptions,
    Verify,
    add_model,
    check_model_id,
    check_model_id_shape,
    is_added_source,
    remove_model,
    source_name,
    store_entry,
)
from models.store.progress import Progress
from storage.database import Database
from storage.errors import NotFound
from storage.repositories import BaseModelRepository
from storage.tables import Adapter, BaseModelRow, FineTuneJob, JobState

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelPrices:
    """The configured prices per 1M tokens: ``per_model`` (``TAILOR_MODEL_COSTS``) and
    the price of a 1B-parameter model (``TAILOR_COST_PER_BILLION_PARAMETERS``)."""

    per_model: Mapping[str, float] = field(default_factory=dict)
    per_billion_parameters: float = 1.0


def price_per_million_tokens(
    model_id: str, parameter_count: int, prices: ModelPrices, declared: float | None = None
) -> float:
    """A configured price (``TAILOR_MODEL_COSTS``), else the one ``declared`` when the model
    was added (``--price``), else one proportional to the parameter count.

    The configuration wins because it can change without adding the model again. The
    proportional default reflects that decode cost scales with the weights read per
    token; operators with real prices configure them.
    """
    if model_id in prices.per_model:
        return prices.per_model[model_id]
    if declared is not None:
        return declared
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
                    model.id, model.parameter_count, prices, model.price
                ),
            )
        )
    return registered


def add_base_model(
    database: Database,
    store_dir: Path,
    model_id: str,
    source: Path,
    options: AddOptions,
    *,
    prices: ModelPrices,
    progress: Progress,
    verify: Verify | None = None,
    exist_ok: bool = False,
) -> BaseModelRow:
    """Add ``source`` to the model store as ``model_id`` and register (or re-enable) its row.

    Refused with ``ModelNameTaken`` while an enabled row has that id (a model of another
    store, or one whose files are gone), and with whatever ``models.store.add`` refuses.
    Nothing is left behind when it fails: a store entry whose row could not be written
    is removed again. ``exist_ok``: a model already added under that id from the same
    source is only registered again, not copied (a deployment hook that runs at every
    upgrade); the options then are those it was added with.
    """
    check_model_id(model_id)  # before the name reaches a path or a query
    existing = store_entry(store_dir, model_id) if exist_ok else None
    if existing is not None and existing.added and existing.source == source_name(source):
        with database.session() as session:
            (row,) = register_prepared_models(
                session, [existing], store_dir=store_dir, prices=prices
            )
            row.enabled = True
            session.flush()
            session.expunge(row)
        return row
    with database.session() as session:
        registered = session.get(BaseModelRow, model_id)
        if registered is not None and registered.enabled:
            raise ModelNameTaken(f"a base model named {model_id!r} is already registered")
    prepared = add_model(store_dir, model_id, source, options, progress=progress, verify=verify)
    try:
        with database.session() as session:
            (row,) = register_prepared_models(
                session, [prepared], store_dir=store_dir, prices=prices
            )
            row.enabled = True
            session.flush()
            session.expunge(row)
    except BaseException:
        remove_model(store_dir, model_id)
        raise
    return row


def removal_problem(session: Session, model_id: str, *, force: bool) -> str | None:
    """Why ``model_id`` may not be removed now (None: it may).

    Queued or running fine-tune jobs always stop it (a worker would lose its base under
    it); adapters stop it unless ``force``: they stay in SQL and the blob store, unserved
    until a model of the same name is added again.
    """
    jobs = session.scalar(
        select(func.count())
        .select_from(FineTuneJob)
        .where(
            FineTuneJob.base_model_id == model_id,
            FineTuneJob.state.in_([JobState.QUEUED, JobState.RUNNING]),
        )
    )
    if jobs:
        return f"{model_id} has {jobs} queued or running fine-tune job(s); cancel them first"
    adapters = session.scalar(
        select(func.count()).select_from(Adapter).where(Adapter.base_model_id == model_id)
    )
    if adapters and not force:
        return (
            f"{model_id} has {adapters} adapter(s); remove it with force to keep them "
            "unserved (they serve again if a model of this name is added)"
        )
    return None


def remove_base_model(
    database: Database,
    store_dir: Path,
    model_id: str,
    *,
    force: bool = False,
    before_files_go: Callable[[str], None] | None = None,
) -> None:
    """Disable ``model_id``'s row, then delete its files from the store.

    ``before_files_go(model_id)`` runs once the row is disabled: a serving process
    stops its engine there.

    ``NotFound`` when neither the store nor an enabled row has it; ``ModelRemovalRefused``
    for a packaged model, or one ``removal_problem`` stops. Also finishes a removal or an
    add that stopped half way (a disabled row with files, files without a row).
    """
    check_model_id_shape(model_id)
    entry = store_entry(store_dir, model_id)
    with database.session() as session:
        row = session.get(BaseModelRow, model_id)
        registered = row is not None and row.enabled
        if not registered and entry is None:
            raise NotFound(f"base model {model_id} not found")
        added = entry.added if entry is not None else is_added_source(row.source if row else "")
        if not added:
            raise ModelRemovalRefused(
                f"{model_id} is a packaged model (`tailor models prepare` puts it back); "
                "leave it out of TAILOR_MODELS instead"
            )
        problem = removal_problem(session, model_id, force=force)
        if problem is not None:
            raise ModelRemovalRefused(problem)
        if row is not None:
            row.enabled = False
    if before_files_go is not None:
        before_files_go(model_id)
    if entry is not None:
        remove_model(store_dir, model_id)
    logger.info("removed the base model %s", model_id)
