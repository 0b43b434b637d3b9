"""Named SQL queries, loaded from ``sql/queries/*.sql``.

Each file holds blocks that start with ``-- name: <query_name>``; the text up to the next marker
is the statement. Every statement the system runs is therefore readable without Python.

A condition many statements share is written once, as a block ``-- fragment: <name>`` whose
parameters are numbered from ``$1``, and a statement takes it in with ``{<name> $N}``: its
parameters renumbered from ``$N``. A fragment is not a statement of its own.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SQL_DIR = ROOT / "sql"
MIGRATIONS_DIR = SQL_DIR / "migrations"
QUERIES_DIR = SQL_DIR / "queries"

_MARKER = re.compile(r"^--\s*(name|fragment):\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_USE = re.compile(r"\{([a-z_][a-z0-9_]*) \$(\d+)\}")
_PARAM = re.compile(r"\$(\d+)")


def parse_blocks(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """Split one file's text into its statements and its fragments, ``{name: text}`` each; a
    repeated name is an error."""
    blocks: dict[str, dict[str, str]] = {"name": {}, "fragment": {}}
    marks = list(_MARKER.finditer(text))
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = text[mark.end() : end].strip()
        kind, name = mark.groups()
        if name in blocks["name"] or name in blocks["fragment"]:
            raise ValueError(f"query {name!r} is defined twice")
        if kind == "fragment":
            # Its comment stays in the file: taken in mid-line, it would hide what follows.
            body = "\n".join(line for line in body.splitlines() if not line.startswith("--"))
        if not body:
            raise ValueError(f"query {name!r} is empty")
        blocks[kind][name] = body
    return blocks["name"], blocks["fragment"]


def expand(statement: str, fragments: dict[str, str]) -> str:
    """``statement`` with each ``{fragment $N}`` replaced by the fragment, its ``$k`` made
    ``$(N + k - 1)``."""

    def use(match: re.Match[str]) -> str:
        name, first = match.group(1), int(match.group(2))
        if name not in fragments:
            raise ValueError(f"no fragment {name!r}")
        return _PARAM.sub(lambda p: f"${int(p.group(1)) + first - 1}", fragments[name])

    return _USE.sub(use, statement)


@cache
def queries() -> dict[str, str]:
    """Every named query of ``sql/queries``, across files, with the fragments of every file
    taken in; names are unique project-wide."""
    statements: dict[str, str] = {}
    fragments: dict[str, str] = {}
    for path in sorted(QUERIES_DIR.glob("*.sql")):
        found, shared = parse_blocks(path.read_text(encoding="utf-8"))
        for name in (*found, *shared):
            if name in statements or name in fragments:
                raise ValueError(f"query {name!r} is defined in more than one file")
        statements.update(found)
        fragments.update(shared)
    return {name: expand(body, fragments) for name, body in statements.items()}


def q(name: str) -> str:
    """The statement called ``name``; a typo fails loudly."""
    try:
        return queries()[name]
    except KeyError:
        raise KeyError(f"no named query {name!r} in {QUERIES_DIR}") from None
