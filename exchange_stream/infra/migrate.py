"""Schema migrations: apply ``sql/migrations/NNNN_name.sql`` in order, once each.

A session-level advisory lock makes concurrent ``migrate`` runs (several workers starting at once)
wait for each other; each file runs in its own transaction together with its bookkeeping row, so a
failed migration leaves nothing half-applied.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from exchange_stream.infra.sql import MIGRATIONS_DIR, q

log = logging.getLogger(__name__)

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


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


async def apply_pending(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    """Apply what is not yet recorded; return the applied versions (empty when up to date)."""
    await conn.execute(q("migrations_lock"))
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
            async with conn.transaction():
                await conn.execute(m.sql)
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
