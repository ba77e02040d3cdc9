"""The temporary Prefect server that ``python -m pipeline run`` starts for itself
(``flows/environment.py``): only without a server of the user's, never left behind,
and a new home's database copied from the template that an earlier run left."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from flows import environment, prefect_database
from flows.environment import _save_template, _seed_database, start_temporary_server
from tests.conftest import REPO
from tests.test_resume import temporary_servers


def _tables(database: Path) -> dict[str, int]:
    """Rows per table of a SQLite database."""
    with closing(sqlite3.connect(database)) as db:
        names = [name for (name,) in db.execute("select name from sqlite_master where type = 'table'")]
        return {name: db.execute(f'select count(*) from "{name}"').fetchone()[0] for name in names}


def _cli_env(cache: Path) -> dict[str, str]:
    """A user's environment: no Prefect settings, the template cache in ``cache``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return env | {"PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(cache)}


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "-q", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )


def test_no_temporary_server_with_a_server_of_the_users(monkeypatch: pytest.MonkeyPatch) -> None:
    """``PREFECT_API_URL`` names the server the run records to, as before."""
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    monkeypatch.delitem(sys.modules, "prefect", raising=False)  # as in a new process
    assert start_temporary_server() is None


def test_no_temporary_server_once_prefect_has_read_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Imported, Prefect would not see the address: it keeps starting its own server."""
    import prefect  # noqa: F401

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert start_temporary_server() is None


def _migrated(path: Path) -> Path:
    """A stand-in for a database Prefect migrated: one table, one row."""
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("create table alembic_version (version_num text)")
        db.execute("insert into alembic_version values ('head')")
    return path


@pytest.fixture
def no_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No packaged schema for the installed Prefect, as with a Prefect released after it."""
    monkeypatch.setattr(prefect_database, "SCHEMAS", tmp_path / "no-schemas")


def _definition(sql: str) -> tuple[list[str], list[str]]:
    """A table's definition as (its lines in order, its constraints in any order).

    Prefect's migrations rebuild tables (alembic's batch mode) and write their
    constraints in an order that changes from one run of the migrations to the next:
    two migrated databases differ in it. The columns' order is the table's."""
    lines = [line.strip().rstrip(",").strip() for line in sql.splitlines()]
    return [x for x in lines if not x.startswith("CONSTRAINT")], sorted(x for x in lines if x.startswith("CONSTRAINT"))


def _schema(database: Path) -> dict[str, object]:
    """What a SQLite database is, apart from its pages: definitions, rows per table,
    the migration it is at, and the settings kept in the file."""
    with closing(sqlite3.connect(database)) as db:
        definitions = sorted(
            (kind, name, table, _definition(sql or ""))
            for kind, name, table, sql in db.execute("select type, name, tbl_name, sql from sqlite_master")
        )
        settings = [db.execute(f"pragma {name}").fetchone()[0] for name in ("journal_mode", "user_version", "encoding", "auto_vacuum")]
        version = db.execute("select version_num from alembic_version").fetchall()
    return {"definitions": definitions, "settings": settings, "version": version, "rows": _tables(database)}


def test_the_packaged_schema_makes_what_prefects_migrations_make(tmp_path: Path) -> None:
    """The schema file of the installed Prefect's last migration, against a database
    Prefect's own migrations make now: the same tables, columns, indexes, rows and
    settings, at the same revision."""
    revision = prefect_database.head_revision()
    assert revision is not None
    if not prefect_database.schema_file(revision).is_file():
        pytest.skip(
            f"no schema for the installed Prefect's last migration {revision} (a newer Prefect): "
            "runs migrate a new database as before; write one with python -m flows.prefect_database"
        )
    migrated, made = tmp_path / "migrated.db", tmp_path / "made.db"
    prefect_database.migrate(migrated)
    assert prefect_database.create(made)
    want = _schema(migrated)
    assert want["version"] == [(revision,)], "the revision read from the scripts is where the migrations end"
    assert len(want["definitions"]) > 200 and sum(want["rows"].values()) == 1
    assert _schema(made) == want


def test_a_new_home_without_a_template_is_made_from_the_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in environment.DATABASE_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    revision = prefect_database.head_revision()
    monkeypatch.setattr(prefect_database, "SCHEMAS", tmp_path / "schemas")
    (tmp_path / "schemas").mkdir()
    prefect_database.schema_file(revision).write_text(
        "BEGIN; create table alembic_version (version_num text); "
        f"insert into alembic_version values ('{revision}'); COMMIT;"
    )
    assert _seed_database(tmp_path)  # new, not the template: the server registers its blocks and it is kept
    assert _tables(tmp_path / "prefect.db") == {"alembic_version": 1}
    assert not list(tmp_path.glob(".prefect.db.*")), "the partial database is removed"


def test_a_new_home_starts_from_the_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_schema: None) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in environment.DATABASE_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    first, second, third = (tmp_path / name for name in ("first", "second", "third"))
    for home in (first, second, third):
        home.mkdir()
    assert _seed_database(first)  # no template yet: Prefect makes the database
    _save_template(_migrated(first / "prefect.db"))
    assert not _seed_database(second)
    assert _tables(second / "prefect.db") == {"alembic_version": 1}
    assert not list(second.glob(".prefect.db.*")), "the partial copy is removed"

    (third / "prefect.db").write_bytes(b"a database of its own")
    assert not _seed_database(third)
    assert (third / "prefect.db").read_bytes() == b"a database of its own", "an existing database is never replaced"


def test_a_database_elsewhere_gets_no_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_schema: None) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _save_template(_migrated(tmp_path / "migrated.db"))
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "postgresql+asyncpg://127.0.0.1/prefect")
    assert not _seed_database(tmp_path)
    assert not (tmp_path / "prefect.db").exists()


def test_an_unwritable_cache_only_means_no_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_schema: None) -> None:
    (tmp_path / "cache").write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _save_template(_migrated(tmp_path / "migrated.db"))  # no error
    home = tmp_path / "home"
    home.mkdir()
    assert _seed_database(home)  # no template: Prefect makes the database, as before


def test_a_config_error_starts_no_server(tmp_path: Path) -> None:
    """A stage's pre-flight check fails before the server would start: one line, no
    Prefect home, no server process."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": f"row {i} of some text"}) + "\n" for i in range(20)))
    empty = tmp_path / "wordnet"
    empty.mkdir()
    out = tmp_path / "out"
    failed = _run(
        _cli_env(tmp_path / "cache"), "--input", str(data), "--output", str(out),
        "--set", "stages.augment.enabled=true", "--set", "stages.augment.copies_per_row=1",
        "--set", f"stages.augment.wordnet_dir={empty}",
    )
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert failed.stderr.strip().startswith("error: ") and str(empty) in failed.stderr
    assert not out.exists()
    assert temporary_servers(out / ".prefect") == []


@pytest.mark.flow
def test_runs_leave_the_template_start_from_it_and_stop_their_server(tmp_path: Path) -> None:
    """The first run on a machine makes a new database from the packaged schema and
    leaves a copy of it; a run into a new folder starts from that copy (block types
    already registered); neither leaves its server running."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": f"Row {i}: a sentence of plain English text."}) + "\n" for i in range(50)))
    env = _cli_env(tmp_path / "cache")
    for out in (tmp_path / "first", tmp_path / "second"):
        result = _run(env, "--input", str(data), "--output", str(out))
        assert result.returncode == 0, result.stderr[-3000:]
        assert (out / "data" / "v0001").is_dir()
        assert temporary_servers(out / ".prefect") == []
        templates = list((tmp_path / "cache" / "curation-pipeline" / "prefect").glob("prefect-*.db"))
        assert len(templates) == 1
        rows = _tables(templates[0])
        assert rows["block_type"] > 0 and rows["alembic_version"] == 1
        assert rows["flow_run"] == 0 and rows["task_run"] == 0, "the template holds no run"
    assert _tables(tmp_path / "second" / ".prefect" / "prefect.db")["flow_run"] == 1
