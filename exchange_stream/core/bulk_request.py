"""Bulk Data ``$export`` requests (FHIR Bulk Data Access v3.0.0): a kick-off's parameters read
into the export to run, and what the status URL says about one. Pure: no I/O.

A kick-off is a list of ``(name, value)`` pairs (the query string, a form body, or a FHIR
``Parameters`` resource through :func:`parameters_pairs`) and two headers. :func:`parse_kickoff`
answers an :class:`ExportRequest` or a :class:`Refusal` naming every problem at once. Problems
are of two sorts:

- *unsupported*: a parameter, type, output format, ``_typeFilter`` query or ``Accept`` this
  server does not serve, or a type the credential's scopes do not cover. Refused (400, or 403
  for scopes, 406 for ``Accept``) unless the client sent ``Prefer: handling=lenient``; then the
  thing is set aside and reported, one informational OperationOutcome each, in the manifest's
  ``error`` file. Setting aside never narrows what a client asked for: an ignored
  ``_typeFilter`` leaves its type unfiltered.
- *invalid*: a malformed ``_since``/``_until``, ``_until`` before ``_since``, a single-valued
  parameter given twice with different values. Refused (400) in both modes: guessing would
  silently change which rows an export holds.

Defaults where standard clients differ: no ``Accept`` is read as ``application/fhir+json`` and
no ``Prefer: respond-async`` as if sent (the IG allows either); ``_type`` may be repeated or
comma separated; ``allowPartialManifests`` is a hint a server may ignore, and is. A diagnostic
never echoes a value the client sent, only names that look like FHIR names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from exchange_stream.core.fhir import (
    KIND_OF_TYPE,
    OBSERVATION_CATEGORY,
    RESOURCE_TYPES,
    operation_outcome,
)
from exchange_stream.core.timefmt import rfc3339

# (severity, IssueType code, diagnostics), as core/fhir.py's operation_outcome takes them.
Issue = tuple[str, str, str]

NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
# The record kind each exported type reads (a credential's ``kinds``; ``patient`` for Patient).
KIND_OF = {"Patient": "patient", **KIND_OF_TYPE}
# The search parameters a ``_typeFilter`` may use, per type (token parameters, no modifiers).
TYPE_FILTER_PARAMETERS: Mapping[str, frozenset[str]] = {"Observation": frozenset({"category"})}
# The IG's parameters this server does not support (each refused, or ignored when lenient).
UNSUPPORTED_PARAMETERS = frozenset(
    {"_elements", "patient", "includeAssociatedData", "organizeOutputBy"}
)
# Parameters a server without support for them may ignore.
IGNORED_PARAMETERS = frozenset({"allowPartialManifests"})
# FHIR's generic response-format parameter, when it asks for JSON.
JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json"})
ACCEPTABLE_MEDIA = frozenset(
    {"*/*", "application/*", "application/fhir+json", "application/json", "application/json+fhir"}
)
MAX_PARAMETERS = 100
MAX_PROGRESS_CHARS = 99

# A FHIR instant: date, time to the second at least, and an offset. A "+" left unencoded in a
# query string arrives as a space; it is read back as the "+" it was.
_INSTANT = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})T(?P<time>\d{2}:\d{2}:\d{2}(\.\d{1,9})?)"
    r"(?P<zone>Z|[+\- ]\d{2}:\d{2})"
)
# Names safe to repeat back in a diagnostic: a resource type, a parameter name.
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]{0,63}")
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:\-]{0,63}")


@dataclass(frozen=True)
class ExportRequest:
    """What a kick-off asks for, once read: the export's ``params`` and what was set aside."""

    types: tuple[str, ...]
    since: datetime | None = None
    until: datetime | None = None
    # {"Observation": {"category": ("laboratory",)}}: a resource of the type is exported when,
    # for each parameter, its value is one of these codes. Absent type: no filter.
    type_filters: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    output_format: str = NDJSON
    patient_level: bool = False
    lenient: bool = False
    ignored: tuple[Issue, ...] = ()

    def params(self) -> dict[str, Any]:
        """The ``exports.params`` document the export run reads."""
        return {
            "types": list(self.types),
            "since": rfc3339(self.since) if self.since else None,
            "until": rfc3339(self.until) if self.until else None,
            "type_filters": {
                t: {p: list(codes) for p, codes in by_param.items()}
                for t, by_param in self.type_filters.items()
            },
            "output_format": self.output_format,
            "patient_level": self.patient_level,
        }

    def outcomes(self) -> list[dict[str, Any]]:
        """One informational OperationOutcome per thing set aside (the manifest's errors)."""
        return [operation_outcome([issue]) for issue in self.ignored]


@dataclass(frozen=True)
class Refusal:
    """A kick-off refused: the HTTP status and the issues of its OperationOutcome."""

    status: int
    issues: tuple[Issue, ...]


@dataclass(frozen=True)
class _Problem:
    code: str  # IssueType: not-supported, forbidden, invalid
    diagnostics: str
    ignorable: bool
    status: int = 400


def _unsupported(diagnostics: str, status: int = 400) -> _Problem:
    return _Problem("not-supported", diagnostics, True, status)


def _invalid(diagnostics: str) -> _Problem:
    return _Problem("invalid", diagnostics, False)


def _type_name(value: str) -> str:
    return value if _TYPE_NAME.fullmatch(value) else "a value that is not a resource type"


def _param_name(value: str) -> str:
    return value if _PARAM_NAME.fullmatch(value) else "a parameter"


# --- the kick-off ----------------------------------------------------------------------------


def parse_kickoff(
    pairs: Sequence[tuple[str, str]],
    *,
    prefer: Iterable[str] = (),
    accept: str | None = None,
    patient_level: bool = False,
    allowed_types: frozenset[str] | None = None,
) -> ExportRequest | Refusal:
    """Read a kick-off. ``prefer``: every ``Prefer`` header; ``allowed_types``: the types the
    credential's scopes cover (None: every one)."""
    lenient = preferences(prefer).get("handling") == "lenient"
    if len(pairs) > MAX_PARAMETERS:
        return Refusal(400, (("error", "too-costly", "too many parameters"),))
    problems: list[_Problem] = []
    if accept is not None and not accepts_fhir_json(accept):
        problems.append(_unsupported("Accept: only application/fhir+json is served", 406))
    by_name: dict[str, list[str]] = {}
    for name, value in pairs:
        by_name.setdefault(name, []).append(value)
    for name in by_name:
        problem = _parameter_problem(name, by_name[name])
        if problem is not None:
            problems.append(problem)

    # Every accepted spelling, and an ignored unsupported one, writes the full content type.
    output_format = _single(by_name, "_outputFormat", problems)
    if output_format and output_format.strip().lower() not in OUTPUT_FORMATS:
        problems.append(_unsupported("_outputFormat: only NDJSON is written"))
    since = _instant(by_name, "_since", problems)
    until = _instant(by_name, "_until", problems)
    if since is not None and until is not None and until < since:
        problems.append(_invalid("_until is before _since"))

    types, explicit = _types(by_name.get("_type", []), problems)
    denied = [t for t in types if allowed_types is not None and t not in allowed_types]
    if explicit:
        problems.extend(
            _Problem("forbidden", f"_type: {t} is not in the access token's scopes", True, 403)
            for t in denied
        )
    types = [t for t in types if t not in denied]
    filters = _type_filters(by_name.get("_typeFilter", []), lenient, problems)

    refused = [p for p in problems if not (lenient and p.ignorable)]
    if refused:
        status = 400 if any(p.status == 400 for p in refused) else refused[0].status
        return Refusal(status, tuple(("error", p.code, p.diagnostics) for p in refused))
    ignored = tuple(("information", p.code, f"{p.diagnostics} (ignored)") for p in problems)
    if not types:
        nothing = ("error", "forbidden" if denied else "not-supported", "no type left to export")
        return Refusal(403 if denied else 400, (nothing, *ignored))
    return ExportRequest(
        types=tuple(t for t in RESOURCE_TYPES if t in types),
        since=since,
        until=until,
        type_filters={t: f for t, f in filters.items() if t in types},
        output_format=NDJSON,
        patient_level=patient_level,
        lenient=lenient,
        ignored=ignored,
    )


def _parameter_problem(name: str, values: list[str]) -> _Problem | None:
    """The problem of a parameter this server does not know or support, if it is one."""
    if name in ("_outputFormat", "_since", "_until", "_type", "_typeFilter"):
        return None
    if name in IGNORED_PARAMETERS:
        return None
    if name == "_format" and all(v.strip().lower() in JSON_FORMATS for v in values):
        return None
    if name in UNSUPPORTED_PARAMETERS:
        return _unsupported(f"{name} is not supported")
    return _unsupported(f"parameter {_param_name(name)} is not supported")


def _single(by_name: Mapping[str, list[str]], name: str, problems: list[_Problem]) -> str | None:
    """A parameter given at most once (the same value repeated counts as once)."""
    values = by_name.get(name)
    if not values:
        return None
    if len(set(values)) > 1:
        problems.append(_invalid(f"{name} may be given once"))
        return None
    return values[0]


def _instant(
    by_name: Mapping[str, list[str]], name: str, problems: list[_Problem]
) -> datetime | None:
    value = _single(by_name, name, problems)
    if value is None or not value.strip():
        return None
    moment = parse_instant(value.strip())
    if moment is None:
        problems.append(_invalid(f"{name} must be a FHIR instant, e.g. 2024-01-31T00:00:00Z"))
    return moment


def parse_instant(value: str) -> datetime | None:
    """A FHIR instant (seconds and an offset required) as an aware datetime; None otherwise."""
    match = _INSTANT.fullmatch(value)
    if match is None:
        return None
    zone = match["zone"]
    zone = "+00:00" if zone == "Z" else zone.replace(" ", "+")
    fraction = match["time"][8:]
    # datetime reads at most microseconds: finer digits are cut, never rounded up a second.
    text = f"{match['date']}T{match['time'][:8]}{fraction[:7]}{zone}"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _types(values: list[str], problems: list[_Problem]) -> tuple[list[str], bool]:
    """The supported types asked for (every one when none is named), and whether any was."""
    named = [t.strip() for v in values for t in v.split(",") if t.strip()]
    if not named:
        return list(RESOURCE_TYPES), False
    kept: list[str] = []
    for name in dict.fromkeys(named):
        if name in RESOURCE_TYPES:
            kept.append(name)
        else:
            problems.append(_unsupported(f"_type: {_type_name(name)} is not exported here"))
    return kept, True


def _type_filters(
    values: list[str], lenient: bool, problems: list[_Problem]
) -> dict[str, dict[str, tuple[str, ...]]]:
    """The ``_typeFilter`` queries as the export applies them.

    Queries of one type are or-ed, the parameters of one query and-ed, the comma-separated
    values of one parameter or-ed. A query, or part of one, that cannot be applied is a
    problem; set aside (lenient), a part is dropped (the query matches more), and a query with
    nothing left matches every resource of its type, so that the type is left unfiltered."""
    per_type: dict[str, list[dict[str, set[str]] | None]] = {}
    for value in values:
        type_name, _, query = value.partition("?")
        type_name = type_name.strip()
        if type_name not in RESOURCE_TYPES:
            problems.append(_unsupported(f"_typeFilter on {_type_name(type_name)} is not applied"))
            continue
        supported = TYPE_FILTER_PARAMETERS.get(type_name, frozenset())
        criteria: dict[str, set[str]] = {}
        unapplied = False
        pairs = parse_qsl(query, keep_blank_values=True) if query else []
        if not pairs:
            problems.append(_unsupported(f"_typeFilter on {type_name} without a search query"))
            unapplied = True
        for param, raw in pairs:
            codes = {_token_code(v) for v in raw.split(",") if v.strip()}
            if param not in supported or not codes:
                problems.append(
                    _unsupported(
                        f"_typeFilter: {type_name} search parameter {_param_name(param)}"
                        " is not supported"
                    )
                )
                unapplied = True
                continue
            # Repeated in one query, a parameter is and-ed: a value must match each.
            criteria[param] = criteria[param] & codes if param in criteria else codes
        if unapplied and not lenient:
            continue
        per_type.setdefault(type_name, []).append(criteria or None)
    filters: dict[str, dict[str, tuple[str, ...]]] = {}
    for type_name, queries in per_type.items():
        if any(q is None for q in queries):
            continue
        params = set.intersection(*(set(q) for q in queries if q is not None))
        if len(queries) > 1 and not all(set(q) == params for q in queries if q is not None):
            # Or-ing queries on different parameters cannot be said as one code list each.
            problems.append(_unsupported(f"_typeFilter: {type_name} queries of unlike parameters"))
            continue
        filters[type_name] = {
            p: tuple(sorted(set().union(*(q[p] for q in queries if q is not None))))
            for p in sorted(params)
        }
    return filters


def _token_code(value: str) -> str:
    """A token search value as the export compares it: ``code``, or ``system|code`` for a
    system other than the category one (which then matches nothing exported)."""
    system, bar, code = value.strip().partition("|")
    if not bar:
        return system
    return code if system in ("", OBSERVATION_CATEGORY) else f"{system}|{code}"


def preferences(headers: Iterable[str]) -> dict[str, str]:
    """RFC 7240 preferences of ``Prefer`` headers: lower-case names to values ("" when none);
    the first of a repeated preference wins."""
    found: dict[str, str] = {}
    for header in headers:
        for item in header.split(","):
            token = item.split(";", 1)[0].strip()
            if not token:
                continue
            name, _, value = token.partition("=")
            found.setdefault(name.strip().lower(), value.strip().strip('"').lower())
    return found


def accepts_fhir_json(accept: str) -> bool:
    """Whether an ``Accept`` header allows a FHIR JSON answer (an empty header does)."""
    if not accept.strip():
        return True
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        if media.lower() not in ACCEPTABLE_MEDIA:
            continue
        if any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params):
            continue
        return True
    return False


def parameters_pairs(doc: Any) -> list[tuple[str, str]] | Refusal:
    """The ``(name, value)`` pairs of a FHIR ``Parameters`` resource (a POST kick-off's body).
    A primitive ``value[x]`` is its JSON text (booleans ``true``/``false``), a reference its
    ``reference``, anything else an empty string (its name is all the parser needs)."""
    if not isinstance(doc, dict) or doc.get("resourceType") != "Parameters":
        return Refusal(400, (("error", "invalid", "the body must be a FHIR Parameters resource"),))
    parameters = doc.get("parameter", [])
    if not isinstance(parameters, list) or len(parameters) > MAX_PARAMETERS:
        return Refusal(400, (("error", "invalid", "Parameters.parameter must be a short list"),))
    pairs: list[tuple[str, str]] = []
    for parameter in parameters:
        if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
            return Refusal(400, (("error", "invalid", "each parameter needs a name"),))
        pairs.append((parameter["name"], _value_text(parameter)))
    return pairs


def _value_text(parameter: Mapping[str, Any]) -> str:
    for key, value in parameter.items():
        if not key.startswith("value"):
            continue
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str | int | float):
            return str(value)
        if isinstance(value, dict) and isinstance(value.get("reference"), str):
            return value["reference"]
        return ""
    return ""


def types_of_kinds(kinds: frozenset[str] | None) -> frozenset[str] | None:
    """The exported types a credential's kinds cover (None: every type)."""
    if kinds is None:
        return None
    return frozenset(t for t, kind in KIND_OF.items() if kind in kinds)


# --- the status URL --------------------------------------------------------------------------


def progress_text(status: str, progress: Mapping[str, Any] | None) -> str:
    """``X-Progress`` (under 100 characters, the IG's limit) of a live export, from its run's
    ``job_runs.progress``: a leading percentage when the run states one (``"42% (Encounter)"``,
    which clients read as a number), else what the run is doing."""
    return _progress(status, progress)[:MAX_PROGRESS_CHARS]


def _progress(status: str, progress: Mapping[str, Any] | None) -> str:
    if status == "accepted" or not progress:
        return "queued" if status == "accepted" else "in progress"
    percent = progress.get("percent")
    resource = progress.get("type")
    label = resource if isinstance(resource, str) and _TYPE_NAME.fullmatch(resource) else None
    if isinstance(percent, int | float) and not isinstance(percent, bool):
        text = f"{max(0, min(100, int(percent)))}%"
        return f"{text} ({label})" if label else text
    written = progress.get("resources")
    if isinstance(written, int) and not isinstance(written, bool):
        text = f"{written} resources written"
        return f"{text} ({label})" if label else text
    return f"in progress ({label})" if label else "in progress"


def manifest(
    *,
    status_url: str,
    request_url: str,
    transaction_time: datetime,
    output: Sequence[Mapping[str, Any]],
    errors: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The completion manifest. ``output``: the export's files (``[{type, key, count, bytes}]``),
    each served at ``<status_url>/files/<index>``; ``errors``: its OperationOutcomes, served as
    one NDJSON file at ``<status_url>/errors/0`` when there is any."""
    files = []
    for index, item in enumerate(output):
        entry: dict[str, Any] = {"type": item["type"], "url": f"{status_url}/files/{index}"}
        if isinstance(item.get("count"), int):
            entry["count"] = item["count"]
        files.append(entry)
    error_files = (
        [{"type": "OperationOutcome", "url": f"{status_url}/errors/0", "count": len(errors)}]
        if errors
        else []
    )
    return {
        "transactionTime": rfc3339(transaction_time),
        "request": request_url,
        "requiresAccessToken": True,
        "output": files,
        "error": error_files,
    }
