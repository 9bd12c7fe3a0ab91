"""The repositories against both real backends (SQLite file and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from storage.database import Database
from storage.errors import Conflict, NotFound
from storage.repositories import (
    GLOBAL_SCOPE,
    AdapterRepository,
    ApiKeyRepository,
    BaseModelRepository,
    ExampleRepository,
    FeedbackRepository,
    JobRepository,
    ResponseRepository,
    RoutingRatingRepository,
    UserRepository,
    hash_api_key,
    user_scope,
)
from storage.tables import AdapterKind, AdapterState, AdapterVersion, JobState, Scope

SHA = "ab" * 32


def add_base_model(database: Database, model_id: str = "tiny-1m", params: int = 1_000_000) -> None:
    with database.session() as session:
        BaseModelRepository(session).upsert(
            model_id=model_id,
            architecture="llama",
            path=model_id,
            sha256=SHA,
            source="test",
            source_sha256=SHA,
            dtype="float16",
            size_bytes=2 * params,
            parameter_count=params,
            context_length=2048,
            chat_template=None,
            cost_per_million_tokens=params / 1e9,
        )


def add_user(database: Database, name: str) -> str:
    with database.session() as session:
        return UserRepository(session).create(name=name).id


def add_response(database: Database, user_id: str, response_id: str) -> None:
    with database.session() as session:
        ResponseRepository(session).record(
            response_id=response_id,
            user_id=user_id,
            base_model_id="tiny-1m",
            endpoint="chat.completions",
            request={"messages": [{"role": "user", "content": "hi"}]},
            output_text="hello",
            finish_reason="stop",
            routing_decision={"model": "tiny-1m", "reason": "forced"},
            adapters_used=[],
            prompt_tokens=3,
            completion_tokens=1,
        )


# Users and keys --------------------------------------------------------------


def test_users_are_unique_by_name_and_paged_in_order(database: Database) -> None:
    ids = [add_user(database, f"user-{i}") for i in range(5)]
    with pytest.raises(Conflict), database.session() as session:
        UserRepository(session).create(name="user-3")
    with database.session() as session:
        users = UserRepository(session)
        first = users.list_page(limit=2)
        rest = users.list_page(limit=10, after=first[-1].id)
        assert [u.id for u in first + rest] == ids
        assert users.count() == 5
        with pytest.raises(NotFound):
            users.get(user_id="usr_missing")


def test_blank_user_names_are_refused(database: Database) -> None:
    with pytest.raises(ValueError), database.session() as session:
        UserRepository(session).create(name="   ")


def test_keys_are_stored_as_hashes_and_revocation_is_immediate(database: Database) -> None:
    user_id = add_user(database, "ada")
    with database.session() as session:
        key, secret = ApiKeyRepository(session).create(user_id=user_id)
        key_id = key.id
    assert secret.startswith("tlr_") and len(secret) > 40
    with database.session() as session:
        keys = ApiKeyRepository(session)
        stored = keys.get(key_id=key_id)
        assert stored.key_hash == hash_api_key(secret)
        assert secret not in (stored.key_hash, stored.prefix)
        assert stored.scopes == ["user"]
        found = keys.find_valid(secret=secret)
        assert found is not None and found.user_id == user_id
        assert keys.find_valid(secret=secret + "x") is None
    with database.session() as session:
        revoked_at = ApiKeyRepository(session).revoke(key_id=key_id).revoked_at
    with database.session() as session:
        keys = ApiKeyRepository(session)
        assert keys.find_valid(secret=secret) is None
        assert keys.revoke(key_id=key_id).revoked_at == revoked_at  # first time kept


def test_keys_need_an_existing_user_and_keep_their_scopes(database: Database) -> None:
    user_id = add_user(database, "root")
    with database.session() as session:
        keys = ApiKeyRepository(session)
        with pytest.raises(NotFound):
            keys.create(user_id="usr_nobody")
        key, _ = keys.create(user_id=user_id, scopes=[Scope.ADMIN, Scope.USER, Scope.ADMIN])
        assert key.scopes == ["admin", "user"]
        assert [k.id for k in keys.list_for_user(user_id=user_id)] == [key.id]


# Base models and adapters ------------------------------------------------------


def test_base_model_upsert_refreshes_metadata(database: Database) -> None:
    add_base_model(database, "tiny-1m", 1_000_000)
    add_base_model(database, "small-2m", 2_000_000)
    add_base_model(database, "tiny-1m", 1_500_000)
    with database.session() as session:
        models = BaseModelRepository(session)
        assert [m.id for m in models.list_all()] == ["tiny-1m", "small-2m"]
        assert models.get(model_id="tiny-1m").parameter_count == 1_500_000
        models.set_enabled(model_id="small-2m", enabled=False)
        assert [m.id for m in models.list_all()] == ["tiny-1m"]
        assert len(models.list_all(enabled_only=False)) == 2


def test_adapter_versions_number_up_and_never_start_active(database: Database) -> None:
    add_base_model(database)
    user_id = add_user(database, "ada")
    with database.session() as session:
        adapters = AdapterRepository(session)
        expert = adapters.create_adapter(
            kind=AdapterKind.SPECIALIST, base_model_id="tiny-1m", user_id=user_id
        )
        v1 = adapters.add_version(
            adapter_id=expert.id, rank=8, alpha=16, target_modules=["q_proj"], sha256=SHA
        )
        v2 = adapters.add_version(
            adapter_id=expert.id,
            rank=8,
            alpha=16,
            target_modules=["q_proj", "v_proj"],
            sha256=SHA,
            parent_version_id=v1.id,
            eval_metrics={"nll": 2.5},
        )
        assert (v1.version, v2.version) == (1, 2)
        with pytest.raises(ValueError):
            adapters.add_version(
                adapter_id=expert.id,
                rank=8,
                alpha=16,
                target_modules=[],
                sha256=SHA,
                state=AdapterState.ACTIVE,
            )
        with pytest.raises(ValueError):  # a candidate without weights
            adapters.add_version(adapter_id=expert.id, rank=8, alpha=16, target_modules=[])
        assert [v.version for v in adapters.list_versions(adapter_id=expert.id)] == [1, 2]
        assert adapters.get_version(version_id=v2.id).eval_metrics == {"nll": 2.5}
        assert adapters.active_version(adapter_id=expert.id) is None
        with pytest.raises(Conflict):
            adapters.create_adapter(
                kind=AdapterKind.SPECIALIST, base_model_id="tiny-1m", user_id=user_id
            )


def test_the_database_allows_one_active_version_per_expert(database: Database) -> None:
    add_base_model(database)
    with database.session() as session:
        adapters = AdapterRepository(session)
        expert = adapters.create_adapter(kind=AdapterKind.GENERALIST, base_model_id="tiny-1m")
        versions = [
            adapters.add_version(
                adapter_id=expert.id, rank=4, alpha=8, target_modules=["q_proj"], sha256=SHA
            )
            for _ in range(2)
        ]
        expert_id = expert.id
    with database.session() as session:
        session.execute(
            update(AdapterVersion)
            .where(AdapterVersion.id == versions[0].id)
            .values(state=AdapterState.ACTIVE)
        )
    with pytest.raises(IntegrityError), database.session() as session:
        session.execute(
            update(AdapterVersion)
            .where(AdapterVersion.id == versions[1].id)
            .values(state=AdapterState.ACTIVE)
        )
    with database.session() as session:
        active = AdapterRepository(session).active_version(adapter_id=expert_id)
        assert active is not None and active.id == versions[0].id


def test_users_see_their_specialists_and_generalists_but_not_others(database: Database) -> None:
    add_base_model(database)
    ada, bob = add_user(database, "ada"), add_user(database, "bob")
    with database.session() as session:
        adapters = AdapterRepository(session)
        mine = adapters.create_adapter(
            kind=AdapterKind.SPECIALIST, base_model_id="tiny-1m", user_id=ada
        )
        theirs = adapters.create_adapter(
            kind=AdapterKind.SPECIALIST, base_model_id="tiny-1m", user_id=bob
        )
        shared = adapters.create_adapter(kind=AdapterKind.GENERALIST, base_model_id="tiny-1m")
        with pytest.raises(ValueError):
            adapters.create_adapter(
                kind=AdapterKind.GENERALIST, base_model_id="tiny-1m", user_id=ada
            )
        visible = {a.id for a in adapters.list_visible_to(user_id=ada)}
        assert visible == {mine.id, shared.id}
        with pytest.raises(NotFound):
            adapters.get_visible_to(adapter_id=theirs.id, user_id=ada)
        assert adapters.get_visible_to(adapter_id=shared.id, user_id=ada).id == shared.id
        found = adapters.find_adapter(
            kind=AdapterKind.SPECIALIST, base_model_id="tiny-1m", user_id=bob
        )
        assert found is not None and found.id == theirs.id


# Examples, responses, feedback ----------------------------------------------------


def test_examples_are_counted_and_paged_per_user(database: Database) -> None:
    ada, bob = add_user(database, "ada"), add_user(database, "bob")
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    with database.session() as session:
        examples = ExampleRepository(session)
        stored = examples.add_many(user_id=ada, examples=[chat] * 5)
        examples.add_many(user_id=bob, examples=[chat])
        assert examples.count(user_id=ada) == 5
        assert examples.count(user_id=ada, since_id=stored[2].id) == 2
        page = examples.list_page(user_id=ada, limit=3)
        more = examples.list_page(user_id=ada, after_id=page[-1].id)
        assert len(page) == 3 and len(more) == 2
        assert page[0].messages == chat


def test_a_failed_batch_of_examples_stores_nothing(database: Database) -> None:
    ada = add_user(database, "ada")
    with pytest.raises(IntegrityError), database.session() as session:
        examples = ExampleRepository(session)
        examples.add_many(user_id=ada, examples=[[{"role": "user", "content": "ok"}]])
        examples.add_many(user_id="usr_missing", examples=[[{"role": "user", "content": "x"}]])
    with database.session() as session:
        assert ExampleRepository(session).count(user_id=ada) == 0


def test_feedback_counts_once_and_only_on_own_responses(database: Database) -> None:
    add_base_model(database)
    ada, bob = add_user(database, "ada"), add_user(database, "bob")
    add_response(database, ada, "chatcmpl-a1")
    add_response(database, ada, "chatcmpl-a2")
    add_response(database, bob, "chatcmpl-b1")
    with database.session() as session:
        feedback = FeedbackRepository(session)
        first, new = feedback.record(user_id=ada, response_id="chatcmpl-a1", rating=1)
        again, new_again = feedback.record(user_id=ada, response_id="chatcmpl-a1", rating=1)
        assert new and not new_again and again.id == first.id
        _, preferred_new = feedback.record(
            user_id=ada, response_id="chatcmpl-a2", preferred_over_id="chatcmpl-a1"
        )
        assert preferred_new
        with pytest.raises(NotFound):
            feedback.record(user_id=ada, response_id="chatcmpl-b1", rating=1)
        with pytest.raises(NotFound):
            feedback.record(user_id=ada, response_id="chatcmpl-a1", preferred_over_id="chatcmpl-b1")
        with pytest.raises(ValueError):
            feedback.record(user_id=ada, response_id="chatcmpl-a1", rating=5)
        with pytest.raises(ValueError):
            feedback.record(user_id=ada, response_id="chatcmpl-a1")
        with pytest.raises(ValueError):
            feedback.record(user_id=ada, response_id="chatcmpl-a1", preferred_over_id="chatcmpl-a1")
        assert feedback.count(user_id=ada) == 2
        assert feedback.count(user_id=bob) == 0
        assert [f.id for f in feedback.list_after()] == sorted(f.id for f in feedback.list_after())
    with database.session() as session:
        responses = ResponseRepository(session)
        with pytest.raises(NotFound):
            responses.get_for_user(response_id="chatcmpl-b1", user_id=ada)
        assert [r.id for r in responses.list_for_user(user_id=bob)] == ["chatcmpl-b1"]


# Routing and jobs -------------------------------------------------------------------


def test_routing_ratings_are_saved_per_scope(database: Database) -> None:
    add_base_model(database)
    ada = add_user(database, "ada")
    with database.session() as session:
        ratings = RoutingRatingRepository(session)
        ratings.save(
            scope=GLOBAL_SCOPE, base_model_id="tiny-1m", rating=1000, games=0, last_feedback_id=0
        )
        ratings.save(
            scope=user_scope(ada), base_model_id="tiny-1m", rating=990, games=1, last_feedback_id=7
        )
        ratings.save(
            scope=GLOBAL_SCOPE, base_model_id="tiny-1m", rating=1016, games=1, last_feedback_id=7
        )
    with database.session() as session:
        ratings = RoutingRatingRepository(session)
        (global_row,) = ratings.list_all(scope=GLOBAL_SCOPE)
        assert (global_row.rating, global_row.games, global_row.last_feedback_id) == (1016, 1, 7)
        assert len(ratings.list_all()) == 2


def test_an_idempotency_key_maps_to_one_job(database: Database) -> None:
    add_base_model(database)
    ada, bob = add_user(database, "ada"), add_user(database, "bob")
    with database.session() as session:
        jobs = JobRepository(session)
        job, created = jobs.create(
            kind=AdapterKind.SPECIALIST,
            base_model_id="tiny-1m",
            user_id=ada,
            idempotency_key="retry-me",
            hyperparameters={"epochs": 2},
        )
        same, created_again = jobs.create(
            kind=AdapterKind.SPECIALIST,
            base_model_id="tiny-1m",
            user_id=ada,
            idempotency_key="retry-me",
        )
        assert created and not created_again and same.id == job.id
        # The same key from another user is another job.
        other, other_created = jobs.create(
            kind=AdapterKind.SPECIALIST,
            base_model_id="tiny-1m",
            user_id=bob,
            idempotency_key="retry-me",
        )
        assert other_created and other.id != job.id
        assert job.state is JobState.QUEUED and job.hyperparameters == {"epochs": 2}
        assert job.target_key == f"specialist:{ada}:tiny-1m"
        with pytest.raises(NotFound):
            jobs.get_for_user(job_id=job.id, user_id=bob)
        assert [j.id for j in jobs.list_page(user_id=ada)] == [job.id]
        assert len(jobs.list_page(state=JobState.QUEUED)) == 2


def test_job_events_come_back_in_order(database: Database) -> None:
    add_base_model(database)
    with database.session() as session:
        jobs = JobRepository(session)
        job, _ = jobs.create(kind=AdapterKind.GENERALIST, base_model_id="tiny-1m", user_id=None)
        for step in range(5):
            jobs.add_event(job_id=job.id, attempt=1, kind="progress", payload={"step": step})
        events = jobs.list_events(job_id=job.id)
        assert [e.payload["step"] for e in events] == [0, 1, 2, 3, 4]
        later = jobs.list_events(job_id=job.id, after_id=events[2].id)
        assert [e.payload["step"] for e in later] == [3, 4]


def test_times_come_back_as_aware_utc(database: Database) -> None:
    user_id = add_user(database, "ada")
    with database.session() as session:
        created = UserRepository(session).get(user_id=user_id).created_at
    assert created.tzinfo is not None
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60
