"""The text form of an operation's final result: a headline, then tables or ``key: value`` lines.

Every operation has its renderer in ``RENDERERS`` (keyed by the operation's name): aligned tables
for lists (recipients, findings, outbox rows), short ``key: value`` lines otherwise. What no
renderer knows (the partial summary of a failed run, an operation added without one) is written
by ``write_tree``, as indented ``key: value`` lines and tables. No path prints a Python repr of
a dict or a list. ``--output json`` bypasses this module.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

Renderer = Callable[[dict[str, Any], TextIO], None]
# Record ids or keys listed per category in text; the JSON result has them all.
LISTED = 10


def print_text(final: dict[str, Any], out: TextIO, title: str | None = None) -> None:
    """A human summary of ``final`` (the CLI's output object, ``cli/operations.py``); ``title``
    names the operation as the shell does (``recipients list``)."""
    name = title or final.get("operation") or "command"
    run_id = final.get("job_run_id")
    status = final["status"]
    ran = final.get("previous_status") if status == "duplicate" else status
    if status == "duplicate":
        status = f"duplicate of an earlier run that {ran or 'ran'}"
    out.write(f"{name}: {status}" + (f" (job run {run_id})" if run_id else "") + "\n")
    if final.get("error"):
        out.write(f"  error: {final['error']}\n")
    result = final.get("result") or {}
    if not result:
        return
    render = RENDERERS.get(final.get("operation") or "")
    if ran == "succeeded" and render is not None:
        render(result, out)
    else:
        write_tree(out, result, indent=1)


# Generic: any result as key: value lines and tables.


def value_text(value: Any) -> str:
    """One value as a reader writes it: ``-`` for none, yes/no, lists joined by commas, objects
    as ``key=value`` pairs."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}={value_text(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        if not value:
            return "none"
        shown = ", ".join(value_text(v) for v in value[:LISTED])
        return shown + (f" … (+{len(value) - LISTED} more)" if len(value) > LISTED else "")
    return str(value)


def write_tree(out: TextIO, value: dict[str, Any], indent: int) -> None:
    """``value`` as indented ``key: value`` lines; nested objects indent further, lists of
    objects become tables."""
    pad = "  " * indent
    for key, item in value.items():
        label = key.replace("_", " ")
        if isinstance(item, dict) and item:
            out.write(f"{pad}{label}:\n")
            write_tree(out, item, indent + 1)
        elif isinstance(item, list) and item and all(isinstance(v, dict) for v in item):
            out.write(f"{pad}{label}:\n")
            columns = list(dict.fromkeys(k for row in item for k in row))
            _table(
                out,
                tuple(c.replace("_", " ") for c in columns),
                [tuple(value_text(row.get(c)) for c in columns) for row in item],
                indent=indent + 1,
            )
        else:
            out.write(f"{pad}{label}: {value_text(item)}\n")


# replay


_NOT_EMITTED = {
    "uninferable": "bodies of no known format (never guessed)",
    "unparseable": "bodies that are not JSON",
    "incompatible": "objects of another format than --emit-version",
    "unrecognised_key": "keys not named <source>/<record id>.json",
    "vanished": "objects deleted between listing and reading",
}


def _replay(s: dict[str, Any], out: TextIO) -> None:
    if s.get("verify"):
        _replay_verify(s, out)
        return
    out.write(f"  source: {s['source']}, emit version {s['emit_version']}\n")
    if s.get("dry_run"):
        out.write(
            f"  dry run, nothing emitted: would emit {s['would_emit']} event(s) "
            f"of {s['listed']} raw object(s) listed\n"
        )
    else:
        out.write(
            f"  emitted {s['emitted']} event(s) through the outbox "
            f"of {s['listed']} raw object(s) listed\n"
        )
    skipped = [(name, s[name], text) for name, text in _NOT_EMITTED.items() if s.get(name)]
    if not skipped:
        out.write("  skipped: none\n")
        return
    out.write("  skipped:\n")
    _table(out, ("reason", "count", "what"), skipped, indent=2)
    for name, keys in (s.get("samples") or {}).items():
        _listing(out, f"{name}, keys", keys, s.get(name, len(keys)))


def _replay_verify(s: dict[str, Any], out: TextIO) -> None:
    gaps = s["gaps"]
    verdict = f"{gaps} GAP(S), raw objects without a canonical row" if gaps else "ok, no gaps"
    out.write(f"  verify (source {s['source']}): {verdict}\n")
    out.write(f"  raw objects: {s['raw_objects']}\n")
    out.write(f"  unrecognised keys: {s['unrecognised_keys']}\n")
    _listing(out, "missing, record ids", s["missing_record_ids"], s["gaps"])
    if s["gaps"]:
        out.write(f"  repair: exchange-stream replay --source {s['source']}\n")


# reconcile


_FINDINGS = {
    "raw_without_manifest": "raw objects without a manifest row",
    "manifest_written_not_enqueued": "manifest rows written, no event enqueued",
    "enqueued_without_canonical": "events enqueued, no canonical row",
    "canonical_without_manifest": "canonical rows without a manifest row",
    "manifest_without_raw": "manifest rows whose raw object is gone",
    "state_mismatch": "manifest states that disagree with the rows",
    "outbox_stuck": "outbox rows unpublished after a failed attempt (report only)",
}


def _reconcile(s: dict[str, Any], out: TextIO) -> None:
    counts: dict[str, int] = s["counts"]
    total = sum(counts.values())
    out.write(f"  source: {s['source']}\n")
    out.write(f"  raw objects: {s['raw_objects']} ({s['unrecognised_keys']} unrecognised keys)\n")
    out.write(f"  findings: {total}\n")
    _table(
        out,
        ("finding", "count", "what"),
        [(name, n, _FINDINGS.get(name, "")) for name, n in counts.items()],
    )
    stuck = s.get("outbox_stuck_rows") or []
    for name, ids in s["records"].items():
        if not (name == "outbox_stuck" and stuck):  # their table below names them
            _listing(out, f"{name}, record ids", ids, counts.get(name, len(ids)))
    if stuck:
        out.write("  outbox stuck rows:\n")
        _table(
            out,
            ("outbox id", "record id", "topic", "attempts", "last error", "next attempt"),
            [
                (
                    r["outbox_id"],
                    value_text(r["record_id"]),
                    r["topic"],
                    r["attempts"],
                    value_text(r["last_error"]),
                    value_text(r["next_attempt_at"]),
                )
                for r in stuck[:LISTED]
            ],
            indent=2,
        )
    if not s["repair"]:
        hint = "; --repair fixes what can be fixed" if total else ""
        out.write(f"  repair: not asked, nothing changed{hint}\n")
        return
    actions: dict[str, int] = s.get("actions") or {}
    if not actions:
        out.write("  repair: nothing to repair\n")
        return
    out.write("  repair actions (each in audit_log):\n")
    _table(out, ("action", "count"), sorted(actions.items()), indent=2)


# dlq redrive


def _redrive(s: dict[str, Any], out: TextIO) -> None:
    _lines(
        out,
        [
            ("version", s["version"]),
            ("from", s["dlq_topic"]),
            ("to", s["target_topic"]),
            ("redriven", f"{s['redriven']} event(s) re-published"),
            ("skipped", f"{s['skipped_unparseable']} unparseable dead letter(s)"),
            ("remaining", f"{s['remaining']} dead letter(s) not redriven"),
        ],
    )


# recipients


def _recipient_add(s: dict[str, Any], out: TextIO) -> None:
    rows = [("recipient", s["recipient"]), ("status", s["status"]), ("key version", s["version"])]
    if "jwks_keys" in s:
        rows.append(("jwks keys", s["jwks_keys"]))
    _lines(out, rows)


def _recipient_set_jwks(s: dict[str, Any], out: TextIO) -> None:
    _lines(out, [("recipient", s["recipient"]), ("jwks keys", s["jwks_keys"])])


_RECIPIENT_COLUMNS = (
    "recipient",
    "status",
    "current key",
    "active keys",
    "retired keys",
    "jwks keys",
    "created",
    "revoked",
)


def _recipients_list(s: dict[str, Any], out: TextIO) -> None:
    out.write(f"  {s['count']} recipient(s)\n")
    if not s["recipients"]:
        return

    def versions(r: dict[str, Any], status: str) -> str:
        return ", ".join(str(k["version"]) for k in r["keys"] if k["status"] == status) or "-"

    _table(
        out,
        _RECIPIENT_COLUMNS,
        [
            (
                r["recipient"],
                r["status"],
                value_text(r["current_version"]),
                versions(r, "active"),
                versions(r, "retired"),
                value_text(r["jwks_keys"]),
                _time(r["created_at"]),
                _time(r["revoked_at"]),
            )
            for r in s["recipients"]
        ],
    )


def _recipient_rotate(s: dict[str, Any], out: TextIO) -> None:
    _lines(
        out,
        [
            ("recipient", s["recipient"]),
            ("current key version", s["current_version"]),
            ("resolvable versions", value_text(s["resolvable_versions"])),
        ],
    )


def _recipient_retire(s: dict[str, Any], out: TextIO) -> None:
    _lines(
        out,
        [
            ("recipient", s["recipient"]),
            ("retired version", s["retired_version"]),
            ("resolvable versions", value_text(s["resolvable_versions"])),
        ],
    )


def _recipient_revoke(s: dict[str, Any], out: TextIO) -> None:
    _lines(out, [("recipient", s["recipient"]), ("status", s["status"])])


# materialize-patient-index


def _patient_index(s: dict[str, Any], out: TextIO) -> None:
    if s["mode"] == "verify":
        _print_verify(s, out)
    else:
        _print_index_run(s, out)


def _print_index_run(s: dict[str, Any], out: TextIO) -> None:
    dry = s["mode"] == "dry_run"
    out.write(
        f"  {'dry run, nothing written' if dry else 'run'}: {s['scanned']} canonical rows in "
        f"{s['batches']} batch(es) of up to {s['batch_size']}, {s['elapsed_s']} s, "
        f"{s['rows_per_s']} rows/s\n"
    )
    if dry:
        rows = [
            ("would insert", s["would_insert"], "rows new to the index"),
            ("would update", s["would_update"], "index rows that differ from canonical"),
        ]
    else:
        rows = [
            ("inserted", s["inserted"], "rows new to the index"),
            ("updated", s["updated"], "index rows that differed from canonical"),
        ]
    if s.get("from_start"):
        removed = s["would_remove_orphans"] if dry else s["orphans_removed"]
        label = "would remove" if dry else "removed"
        rows.append((label, removed, "index rows whose canonical row is gone"))
    rows += [
        ("skipped", s["skipped_no_token"], "canonical rows without a patient token"),
        ("pending", s["pending"], "canonical rows after the cursor (arrived during the run)"),
    ]
    _table(out, ("", "", ""), rows, header=False)
    out.write(f"  cursor: {_cursor(s['cursor'])} (started from {_cursor(s['started_from'])})\n")
    if s["horizon_wait_timed_out"]:
        out.write("  warning: transactions older than the run are still open; run again\n")
    if dry and s["sample_record_ids"]:
        out.write("  would write, first record ids:\n")
        out.writelines(f"    {rid}\n" for rid in s["sample_record_ids"])


def _print_verify(s: dict[str, Any], out: TextIO) -> None:
    scope = f"source {s['source']}" if s["source"] else "all sources"
    verdict = "ok, no gaps" if s["ok"] else f"{s['gaps']} GAP(S)"
    out.write(
        f"  verify ({scope}): {verdict}; {s['canonical_rows']} canonical rows, "
        f"{s['index_rows']} index rows, checkpoint at {_cursor(s['cursor'])}\n"
    )
    meaning = {
        "missing": "canonical rows behind the checkpoint, absent from the index (gap)",
        "orphaned": "index rows without a canonical row (gap)",
        "mismatched": "index rows that differ from their canonical row (gap)",
        "pending": "canonical rows after the checkpoint: the next run indexes them",
        "unindexable_no_token": "canonical rows without a patient token (see data-quality)",
    }
    _table(
        out,
        ("finding", "count", "meaning"),
        [(name, s[name]["count"], text) for name, text in meaning.items()],
    )
    _print_ids(out, {name: s[name] for name in meaning})
    if not s["ok"]:
        out.write("  repair: jobs run materialize-patient-index --from-start\n")


# data-quality


def _print_data_quality(s: dict[str, Any], out: TextIO) -> None:
    scope = f"source {s['source']}" if s["source"] else "all sources"
    t = s["thresholds"]
    out.write(
        f"  {s['issues_total']} finding(s), {scope}; stuck after {t['stuck_after_s']} s, "
        f"window {t['window_s']} s, at least {t['min_transient_failures']} transient failures\n"
    )
    _table(
        out,
        ("check", "count", "what"),
        [(name, c["count"], c["description"]) for name, c in s["checks"].items()],
    )
    if s["dlq_by_stage_type"]:
        out.write(f"  DLQ volume in the last {t['window_s']} s, by stage and type:\n")
        _table(
            out,
            ("stage", "type", "count"),
            [(d["stage"], d["type"], d["count"]) for d in s["dlq_by_stage_type"]],
        )
    _print_ids(out, s["checks"])


def _print_ids(out: TextIO, findings: dict[str, dict[str, Any]]) -> None:
    for name, f in findings.items():
        if not f["record_ids"]:
            continue
        listed = len(f["record_ids"])
        more = f" (first {listed} of {f['count']})" if f["count"] > listed else ""
        out.write(f"  {name}{more}:\n")
        failures = f.get("failures") or {}
        for rid in f["record_ids"]:
            extra = f"  {failures[rid]} transient failures" if rid in failures else ""
            out.write(f"    {rid}{extra}\n")


# Building blocks.


def _lines(out: TextIO, rows: list[tuple[str, Any]]) -> None:
    """``key: value`` lines."""
    out.writelines(f"  {key}: {value_text(value)}\n" for key, value in rows)


def _listing(out: TextIO, label: str, items: list[Any], total: int) -> None:
    """At most ``LISTED`` of ``items``, one a line, under ``label`` (nothing when empty)."""
    if not items:
        return
    shown = items[:LISTED]
    more = f" (first {len(shown)} of {total})" if total > len(shown) else ""
    out.write(f"  {label}{more}:\n")
    out.writelines(f"    {value_text(item)}\n" for item in shown)


def _table(
    out: TextIO,
    headers: tuple[str, ...],
    rows: list[tuple[Any, ...]],
    header: bool = True,
    indent: int = 1,
) -> None:
    """Aligned columns, a column of numbers to the right; ``header`` False leaves the headings
    out."""
    body = [[str(c) for c in row] for row in rows]
    cells = [list(headers), *body] if header else body
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        bool(body) and all(_is_number(row[i]) or row[i] == "-" for row in body)
        for i in range(len(headers))
    ]
    pad = "  " * indent
    for row in cells:
        padded = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ]
        out.write(pad + "  ".join(padded).rstrip() + "\n")


def _is_number(text: str) -> bool:
    return text.lstrip("-").replace(".", "", 1).isdigit()


def _cursor(cursor: dict[str, Any]) -> str:
    return f"xid {cursor['insert_xid']} / {cursor['record_id']}"


def _time(value: str | None) -> str:
    """An RFC 3339 time to the second, in UTC; ``-`` for none."""
    if not value:
        return "-"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _link_persons(s: dict[str, Any], out: TextIO) -> None:
    _lines(
        out,
        [
            (
                "linked",
                f"{s['linked']} record(s) in {s['batches']} batch(es) of up to "
                f"{s['batch_size']}, {s['elapsed_s']} s, {s['rows_per_s']} rows/s",
            ),
            (
                "no identity",
                f"{s['no_identity']} record(s) whose raw object has no readable "
                "patient (each a person of its own)",
            ),
            ("cursor", f"{s['cursor']} (started from {s['started_from']})"),
        ],
    )


# grants and opt-outs

_GRANT_COLUMNS = ("grant", "sources", "kinds", "from", "until", "created", "revoked")


def _grant_row(g: dict[str, Any]) -> tuple[Any, ...]:
    return (
        g["grant_id"],
        value_text(g["sources"]) if g["sources"] else "every source",
        value_text(g["kinds"]) if g["kinds"] else "every kind",
        g["from"] or "-",
        g["until"] or "-",
        g["created_at"] or "-",
        g["revoked_at"] or "-",
    )


def _recipient_grant(s: dict[str, Any], out: TextIO) -> None:
    out.write(f"  granted to {s['recipient']}:\n")
    _table(out, _GRANT_COLUMNS[:-1], [_grant_row(s["grant"])[:-1]], indent=2)


def _recipient_grants(s: dict[str, Any], out: TextIO) -> None:
    out.write(f"  {s['count']} grant(s) in force for {s['recipient']}\n")
    if s["grants"]:
        _table(out, _GRANT_COLUMNS, [_grant_row(g) for g in s["grants"]])


def _recipient_revoke_grant(s: dict[str, Any], out: TextIO) -> None:
    _lines(out, [("recipient", s["recipient"]), ("revoked grant", s["revoked_grant"])])


def _opt_outs(s: dict[str, Any], out: TextIO) -> None:
    _lines(
        out,
        [("identities", f"{s['accepted']} accepted"), ("in force", f"{s['opt_outs']} opt-out(s)")],
    )


def _export(s: dict[str, Any], out: TextIO) -> None:
    write_tree(out, s, indent=1)


RENDERERS: dict[str, Renderer] = {
    "replay": _replay,
    "reconcile": _reconcile,
    "dlq_redrive": _redrive,
    "recipients_add": _recipient_add,
    "recipients_set_jwks": _recipient_set_jwks,
    "recipients_list": _recipients_list,
    "recipients_rotate_key": _recipient_rotate,
    "recipients_retire_key": _recipient_retire,
    "recipients_revoke": _recipient_revoke,
    "recipients_grant": _recipient_grant,
    "recipients_grants": _recipient_grants,
    "recipients_revoke_grant": _recipient_revoke_grant,
    "opt_outs_add": _opt_outs,
    "opt_outs_remove": _opt_outs,
    "export": _export,
    "materialize-patient-index": _patient_index,
    "data-quality": _print_data_quality,
    "link-persons": _link_persons,
}
