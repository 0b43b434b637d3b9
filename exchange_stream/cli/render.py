"""The text summary of an operation's final result: a headline, then a table or a tree.

Jobs print their own tables; every other operation prints its result as indented
``key: value`` lines. ``--output json`` bypasses this module.
"""

from __future__ import annotations

from typing import Any, TextIO


def print_text(final: dict[str, Any], out: TextIO) -> None:
    """A human summary of ``final`` (the result message of a run)."""
    name = final.get("operation") or final.get("command") or "command"
    run_id = final.get("job_run_id")
    status = final["status"]
    if status == "duplicate":
        status = f"duplicate of an earlier run that {final.get('previous_status', 'ran')}"
    out.write(f"{name}: {status}" + (f" (job run {run_id})" if run_id else "") + "\n")
    if final.get("error"):
        out.write(f"  error: {final['error']}\n")
    summary = final.get("result") or {}
    mode = summary.get("mode")
    if mode == "verify":
        _print_verify(summary, out)
    elif mode in ("run", "dry_run"):
        _print_index_run(summary, out)
    elif "checks" in summary and "dlq_by_stage_type" in summary:
        _print_data_quality(summary, out)
    else:
        _write_tree(out, summary, indent=1)


def _write_tree(out: TextIO, value: dict[str, Any], indent: int) -> None:
    pad = "  " * indent
    for key, item in value.items():
        if isinstance(item, dict):
            out.write(f"{pad}{key}:\n")
            _write_tree(out, item, indent + 1)
        elif isinstance(item, list):
            shown = ", ".join(str(v) for v in item[:10])
            more = f" … (+{len(item) - 10})" if len(item) > 10 else ""
            out.write(f"{pad}{key}: [{shown}{more}]\n")
        else:
            out.write(f"{pad}{key}: {item}\n")


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


def _table(
    out: TextIO, headers: tuple[str, ...], rows: list[tuple[Any, ...]], header: bool = True
) -> None:
    cells = [[str(c) for c in row] for row in rows]
    if header:
        cells.insert(0, list(headers))
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        padded = [
            c.rjust(w) if c.lstrip("-").isdigit() else c.ljust(w)
            for c, w in zip(row, widths, strict=True)
        ]
        out.write("  " + "  ".join(padded).rstrip() + "\n")


def _cursor(cursor: dict[str, Any]) -> str:
    return f"xid {cursor['insert_xid']} / {cursor['record_id']}"
