from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from storage import migrate
from storage.database import Database, parse_database_url
from storage.errors import BackendUnavailable, ConfigurationError
from storage.repositories import UserRepository
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
