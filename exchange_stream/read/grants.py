"""What a recipient may read: its grants, as the read and export statements take them.

Deny by default. A record is readable when one of the recipient's grants (``recipient_grants``,
migration 0016) allows its source, its kind and its day (``record_day``: an encounter's
admission, a claim's service date, a lab result's collection). The grants are applied inside
the SQL of every read and export, never to rows already fetched, so a record outside them is
not returned, counted or used to place a cursor.

Every such statement takes the same five parameters, ``Grants.args``, and applies them with
one condition, the fragment ``granted`` of ``sql/queries/read.sql`` (taken in as
``{granted $N}``; ``c`` is the canonical row).

Each grant is one row per (source, kind) it names, NULL for "every". The first parameter is
true when one grant allows everything, so the usual case costs the statement nothing per row. A
recipient with no grant has no row: the ``EXISTS`` is false for every record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

# The record kinds a grant can name (and the canonical rows' record_kind).
GRANT_KINDS = ("encounter", "claim", "lab_result")


@dataclass(frozen=True)
class Grant:
    """One grant: None for every source, every kind, or no bound."""

    grant_id: int
    sources: tuple[str, ...] | None = None
    kinds: tuple[str, ...] | None = None
    from_date: date | None = None
    until_date: date | None = None

    @property
    def unrestricted(self) -> bool:
        return (self.sources, self.kinds, self.from_date, self.until_date) == (None,) * 4

    def allows(self, source: str, kind: str, day: date | None) -> bool:
        """The statements' condition for one record (for tests and the CLI)."""
        if self.sources is not None and source not in self.sources:
            return False
        if self.kinds is not None and kind not in self.kinds:
            return False
        if self.from_date is not None and (day is None or day < self.from_date):
            return False
        return self.until_date is None or (day is not None and day <= self.until_date)

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Grant:
        """A grant from a ``recipient_grants`` row (or the JSON of one)."""

        def day(value: Any) -> date | None:
            return date.fromisoformat(value) if isinstance(value, str) else value

        sources, kinds = row.get("sources"), row.get("kinds")
        return cls(
            grant_id=int(row["grant_id"]),
            sources=tuple(sources) if sources is not None else None,
            kinds=tuple(kinds) if kinds is not None else None,
            from_date=day(row.get("from_date")),
            until_date=day(row.get("until_date")),
        )


SqlArgs = tuple[bool, list[str | None], list[str | None], list[date | None], list[date | None]]


@dataclass(frozen=True)
class Grants:
    """A recipient's grants in force (none revoked)."""

    grants: tuple[Grant, ...] = ()

    @classmethod
    def of(cls, rows: Iterable[Mapping[str, Any]]) -> Grants:
        return cls(tuple(sorted((Grant.of(r) for r in rows), key=lambda g: g.grant_id)))

    @property
    def everything(self) -> bool:
        return any(g.unrestricted for g in self.grants)

    @property
    def nothing(self) -> bool:
        return not self.grants

    def allows(self, source: str, kind: str, day: date | None) -> bool:
        return any(g.allows(source, kind, day) for g in self.grants)

    @property
    def only_source(self) -> str | None:
        """The one source every grant is limited to, if there is one (its feed index serves)."""
        named = {g.sources for g in self.grants}
        if len(named) == 1:
            (sources,) = named
            if sources is not None and len(sources) == 1:
                return sources[0]
        return None

    @property
    def only_kind(self) -> str | None:
        """The one kind every grant is limited to, if there is one."""
        named = {g.kinds for g in self.grants}
        if len(named) == 1:
            (kinds,) = named
            if kinds is not None and len(kinds) == 1:
                return kinds[0]
        return None

    @property
    def kinds(self) -> frozenset[str]:
        """Every kind some grant allows."""
        allowed: set[str] = set()
        for g in self.grants:
            allowed.update(GRANT_KINDS if g.kinds is None else g.kinds)
        return frozenset(allowed)

    def args(self) -> SqlArgs:
        """The five parameters of the grant condition (module docstring)."""
        if self.everything:
            return True, [], [], [], []
        sources: list[str | None] = []
        kinds: list[str | None] = []
        froms: list[date | None] = []
        untils: list[date | None] = []
        for g in self.grants:
            for s in g.sources or (None,):
                for k in g.kinds or (None,):
                    sources.append(s)
                    kinds.append(k)
                    froms.append(g.from_date)
                    untils.append(g.until_date)
        return False, sources, kinds, froms, untils


NO_GRANTS = Grants()
