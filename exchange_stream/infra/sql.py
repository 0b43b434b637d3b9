"""Named SQL queries, loaded from ``sql/queries/*.sql``.

Each file holds blocks that start with ``-- name: <query_name>``; the text up to the next marker
is the statement. Every statement the system runs is therefore readable without Python.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SQL_DIR = ROOT / "sql"
MIGRATIONS_DIR = SQL_DIR / "migrations"
QUERIES_DIR = SQL_DIR / "queries"

_MARKER = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Split one file's text into ``{name: statement}``; a repeated name is an error."""
    queries: dict[str, str] = {}
    marks = list(_MARKER.finditer(text))
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = text[mark.end() : end].strip()
        name = mark.group(1)
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        if not body:
            raise ValueError(f"query {name!r} is empty")
        queries[name] = body
    return queries


@cache
def queries() -> dict[str, str]:
    """Every named query of ``sql/queries``, across files; names are unique project-wide."""
    found: dict[str, str] = {}
    for path in sorted(QUERIES_DIR.glob("*.sql")):
        for name, body in parse_queries(path.read_text(encoding="utf-8")).items():
            if name in found:
                raise ValueError(f"query {name!r} is defined in more than one file")
            found[name] = body
    return found


def q(name: str) -> str:
    """The statement called ``name``; a typo fails loudly."""
    try:
        return queries()[name]
    except KeyError:
        raise KeyError(f"no named query {name!r} in {QUERIES_DIR}") from None
