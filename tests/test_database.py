from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from storage import migrate
from storage.database import Database, parse_database_url
from storage.errors import BackendUnavailable, ConfigurationError
from storage.repositories import AdapterRepository, UserRepository
from storage.tables import Base


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("not a url", "not a database URL"),
        ("mysql://root@localhost/test", "unsupported database 'mysql'"),
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
    ],
)
def test_bad_urls_are_refused_naming_the_setting(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Database(url)
    assert caught.value.setting == "TAILOR_DATABASE_URL"
    assert problem in str(caught.value)


def test_postgres_urls_use_the_installed_driver() -> None:
    for raw in ("postgresql://u@h/db", "postgres://u@h/db", "postgresql+psycopg://u@h/db"):
        assert parse_database_url(raw).drivername == "postgresql+psycopg"


def test_an_unreachable_database_names_the_setting_and_hides_the_password() -> None:
    database = Database("postgresql://tailor:hunter2@127.0.0.1:1/test")
    with pytest.raises(BackendUnavailable) as caught:
        database.ping()
    message = str(caught.value)
    assert message.startswith("TAILOR_DATABASE_URL: cannot connect to")
    assert "hunter2" not in message
    assert "\n" not in message


def test_migrations_build_exactly_the_schema_of_the_tables(database: Database) -> None:
    assert migrate.current_revision(database) == migrate.head_revision()
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def test_upgrading_an_existing_database_keeps_its_data(database: Database) -> None:
    with database.session() as session:
        user_id = UserRepository(session).create(name="ada").id
    migrate.upgrade(database)  # again, as every start-up does
    with database.session() as session:
        assert UserRepository(session).get(user_id=user_id).name == "ada"


def test_downgrade_then_upgrade_round_trips(database: Database) -> None:
    migrate.downgrade(database, "base")
    assert migrate.current_revision(database) is None
    assert "users" not in inspect(database.engine).get_table_names()
    migrate.upgrade(database)
    assert "users" in inspect(database.engine).get_table_names()


def test_sqlite_file_and_directory_are_created(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'nested' / 'dir' / 'tailor.db'}")
    migrate.upgrade(database)
    assert (tmp_path / "nested" / "dir" / "tailor.db").is_file()
    database.dispose()


def test_a_failed_unit_of_work_is_rolled_back(database: Database) -> None:
    with pytest.raises(RuntimeError), database.session() as session:
        UserRepository(session).create(name="grace")
        raise RuntimeError("boom")
    with database.session() as session:
        assert UserRepository(session).count() == 0


def test_each_migration_keeps_rows_written_under_the_previous_schema(
    database_url: str,
) -> None:
    database = Database(database_url)
    migrate.upgrade(database, "0001")
    with database.engine.begin() as connection:
        connection.execute(
            text("INSERT INTO users (id, name, created_at) VALUES ('usr_old', 'old', :now)"),
            {"now": datetime(2026, 1, 1)},
        )
        connection.execute(
            text(
                "INSERT INTO base_models (id, architecture, path, sha256, source, source_sha256,"
                " dtype, size_bytes, parameter_count, context_length, cost_per_million_tokens,"
                " enabled, created_at, updated_at) VALUES ('m', 'llama', 'm', :sha, 's', :sha,"
                " 'float32', 1, 1, 1, 0.1, true, :now, :now)"
            ),
            {"sha": "0" * 64, "now": datetime(2026, 1, 1)},
        )
        connection.execute(
            text(
                "INSERT INTO adapters (id, kind, user_id, owner_key, base_model_id, name,"
                " created_at) VALUES ('adp_old', 'specialist', 'usr_old', 'usr_old', 'm',"
                " 'default', :now)"
            ),
            {"now": datetime(2026, 1, 1)},
        )
        connection.execute(
            text(
                "INSERT INTO adapter_versions (id, adapter_id, version, state, sha256, rank,"
                " alpha, target_modules, eval_metrics, created_at) VALUES ('adv_old', 'adp_old',"
                " 1, 'active', :sha, 8, 16, '[\"q_proj\"]', '{}', :now)"
            ),
            {"sha": "0" * 64, "now": datetime(2026, 1, 1)},
        )
    migrate.upgrade(database)
    with database.session() as session:
        assert UserRepository(session).get(user_id="usr_old").name == "old"
        version = AdapterRepository(session).active_version(adapter_id="adp_old")
        assert version is not None and version.id == "adv_old"
        assert version.replaced_version_id is None
        assert version.target_modules == ["q_proj"]
    database.dispose()
