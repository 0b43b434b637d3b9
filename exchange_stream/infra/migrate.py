"""Schema migrations: apply ``sql/migrations/NNNN_name.sql`` in order, once each.

A session-level advisory lock makes concurrent ``migrate`` runs (several workers starting at once)
wait for each other; each file runs in its own transaction together with its bookkeeping row, so a
failed migration leaves nothing half-applied.

A file whose first line is ``-- migrate: no transaction`` (an index built ``CONCURRENTLY``, which
Postgres refuses inside a transaction) runs statement by statement outside one, and is recorded
after its last statement; it must be safe to run again from the start (0012 drops what it builds
before building it). Its statements are split at each ``;`` that ends a line, so none may hold one
there. The lock is waited for by polling: a migrator blocked inside ``pg_advisory_lock`` holds a
snapshot, which a concurrent index build waits out, while it waits for that build's lock.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from exchange_stream.infra.sql import MIGRATIONS_DIR, q

log = logging.getLogger(__name__)

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
NO_TRANSACTION = "-- migrate: no transaction"
_LOCK_POLL_S = 0.05


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()

    @property
    def transactional(self) -> bool:
        return not self.sql.startswith(NO_TRANSACTION)

    def statements(self) -> list[str]:
        """The statements of a no-transaction migration, comment lines left out."""
        text = "\n".join(
            line for line in self.sql.splitlines() if not line.lstrip().startswith("--")
        )
        return [s.strip() for s in re.split(r";[ \t]*$", text, flags=re.M) if s.strip()]


class MigrationError(RuntimeError):
    """The migrations on disk and in the database disagree."""


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations on disk, in version order; a badly named or duplicate file is an error."""
    found: dict[str, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise MigrationError(f"migration file name must be NNNN_name.sql: {path.name}")
        version, name = match.groups()
        if version in found:
            raise MigrationError(f"two migrations share version {version}")
        found[version] = Migration(version, name, path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


async def _lock(conn: asyncpg.Connection) -> None:
    """Take the migrators' lock, polling (the module docstring says why not waiting in it)."""
    while True:
        if await conn.fetchval(q("migrations_try_lock")):
            return
        await asyncio.sleep(_LOCK_POLL_S)


async def apply_pending(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    """Apply what is not yet recorded; return the applied versions (empty when up to date)."""
    await _lock(conn)
    try:
        await conn.execute(q("migrations_create_table"))
        applied = {r["version"]: r for r in await conn.fetch(q("migrations_applied"))}
        done: list[str] = []
        for m in migrations:
            row = applied.get(m.version)
            if row is not None:
                if row["sha256"] != m.sha256:
                    raise MigrationError(
                        f"migration {m.version}_{m.name} changed after it was applied; "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            if m.transactional:
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(q("migrations_record"), m.version, m.name, m.sha256)
            else:
                for statement in m.statements():
                    await conn.execute(statement)
                await conn.execute(q("migrations_record"), m.version, m.name, m.sha256)
            log.info("applied migration", extra={"fields": {"migration": f"{m.version}_{m.name}"}})
            done.append(m.version)
        return done
    finally:
        await conn.execute(q("migrations_unlock"))


async def migrate(dsn: str) -> list[str]:
    """Connect, apply pending migrations, disconnect."""
    conn = await asyncpg.connect(dsn)
    try:
        return await apply_pending(conn, discover())
    finally:
        await conn.close()
