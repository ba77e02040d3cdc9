"""A new Prefect database made from the schema Prefect's migrations end at.

Why: the first run on a machine found no database for its temporary server, and
Prefect made one by running its 116 SQLite migrations from nothing, 5-6 s of the
12.6 s a 1,000-row run took (``benchmarks/startup.py``), through an async driver
that pays a thread hop per statement. What those migrations end at is fixed by the last
of them (a released migration is never changed), so the package carries that
schema, as SQL, for the revision it was taken at: ``flows/prefect-schemas/<revision>.sql``.
A new database is made from it in milliseconds when the installed Prefect's last
migration is that revision; with any other Prefect there is no such file and Prefect
migrates, as it always did. Prefect's own check at start-up then finds the database
at its head revision and goes on to register its block types, as it does every start.

``python -m flows.prefect_database`` writes the file for the installed Prefect, from a
database its migrations made; ``tests/test_temporary_server.py`` checks the file makes
the same tables, indexes, rows and settings as the migrations.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import closing
from importlib.util import find_spec
from pathlib import Path

SCHEMAS = Path(__file__).with_name("prefect-schemas")
"""Where the schema files are, one per Prefect migration revision."""

_REVISION = re.compile(r"^revision\s*(?::[^=]*)?=\s*['\"](\w+)['\"]", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision\s*(?::[^=]*)?=\s*(.+)$", re.MULTILINE)
_ORDER = "CASE type WHEN 'table' THEN 0 WHEN 'view' THEN 1 WHEN 'index' THEN 2 ELSE 3 END, rowid"
"""Tables first, then what is defined on them, each kind in the order it was made."""


def migrations() -> Path:
    """The installed Prefect's SQLite migration scripts."""
    spec = find_spec("prefect")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("prefect is not installed")
    return Path(spec.origin).parent / "server" / "database" / "_migrations" / "versions" / "sqlite"


def head_revision() -> str | None:
    """The installed Prefect's last SQLite migration: the revision no other follows,
    read from the scripts' ``revision`` and ``down_revision`` lines (milliseconds;
    importing alembic and Prefect's migration environment would take a second). None
    when there is not exactly one."""
    revisions: set[str] = set()
    followed: set[str] = set()
    for script in migrations().glob("*.py"):
        text = script.read_text(encoding="utf-8")
        if (revision := _REVISION.search(text)) is not None:
            revisions.add(revision[1])
        if (down := _DOWN_REVISION.search(text)) is not None:
            followed.update(re.findall(r"['\"](\w+)['\"]", down[1]))
    heads = revisions - followed
    return heads.pop() if len(heads) == 1 else None


def schema_file(revision: str) -> Path:
    return SCHEMAS / f"{revision}.sql"


def create(database: Path) -> bool:
    """Make ``database`` (a new file) at the installed Prefect's last migration, from
    the packaged schema; False, with nothing made, where there is none for it."""
    revision = head_revision()
    if revision is None or not schema_file(revision).is_file():
        return False
    with closing(sqlite3.connect(database)) as db:
        db.executescript(schema_file(revision).read_text(encoding="utf-8"))
    return True


def schema_script(database: Path) -> str:
    """SQL that makes an empty database like ``database``, one that Prefect's
    migrations made: its journal mode, every table, view, index and trigger as SQLite
    keeps their definitions, and the ``alembic_version`` row. Refused if any other
    table holds rows, which the script would leave out."""
    with closing(sqlite3.connect(database)) as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        filled = [t for t in tables if t != "alembic_version" and db.execute(f'SELECT 1 FROM "{t}" LIMIT 1').fetchone()]
        if filled:
            raise ValueError(f"{database}: rows in {', '.join(filled)}; a schema is taken from a database no server has used")
        (journal,) = db.execute("PRAGMA journal_mode").fetchone()
        definitions = [
            sql for (sql,) in db.execute(f"SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' ORDER BY {_ORDER}")
        ]
        versions = [v for (v,) in db.execute("SELECT version_num FROM alembic_version")]
    rows = [f"INSERT INTO alembic_version (version_num) VALUES ('{v}');" for v in versions]
    return "\n".join([f"PRAGMA journal_mode = {journal};", "BEGIN;", *(f"{sql};" for sql in definitions), *rows, "COMMIT;", ""])


def migrate(database: Path) -> None:
    """Make ``database`` (a new file) with the installed Prefect's own migrations, in a
    child process: Prefect reads where its database is once, when imported."""
    with tempfile.TemporaryDirectory(prefix="prefect-home-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {"PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
        code = (  # what the server runs at start-up on a database not at the head revision
            "import asyncio; from prefect.server.database import provide_database_interface; "
            "asyncio.run(provide_database_interface().create_db())"
        )
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"Prefect's migrations failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
        shutil.move(Path(home) / "prefect.db", database)


def main() -> None:
    """Write the schema file of the installed Prefect's last migration."""
    revision = head_revision()
    if revision is None:
        sys.exit(f"error: no single last migration in {migrations()}")
    with tempfile.TemporaryDirectory() as tmp:
        database = Path(tmp) / "prefect.db"
        migrate(database)
        script = schema_script(database)
    SCHEMAS.mkdir(exist_ok=True)
    schema_file(revision).write_text(script, encoding="utf-8")
    print(f"{schema_file(revision)}: {len(script):,} bytes")


if __name__ == "__main__":
    main()
