"""``exchange-stream jobs run NAME``: run a job in this process, with progress and a summary.

Every run is a ``job_runs`` row. Progress shows on stderr when it is a terminal; the summary is a
table on stdout, or one JSON object with ``--output json``.

Exit codes: 0 succeeded (data-quality findings included: they are printed, and exposed as
metrics), 1 failed, 2 invalid arguments, 3 ``--verify`` found gaps in the index.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, TextIO

import orjson

from exchange_stream.config import Settings
from exchange_stream.console import ProgressLine
from exchange_stream.jobs import JOBS, JobOutcome, JobParamsError, run_job_recorded
from exchange_stream.operations import local_context

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_GAPS = 0, 1, 2, 3

# Command-line options that map to job parameters (dest = parameter name). Only options given
# are passed, so each job's defaults apply, and an option the job does not take is refused.
_OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--batch-size", {"type": int, "help": "rows per batch, one transaction each (default 500)"}),
    ("--dry-run", {"action": "store_const", "const": True, "help": "report, write nothing"}),
    (
        "--verify",
        {
            "action": "store_const",
            "const": True,
            "help": "compare the index with canonical rows, write nothing; exit 3 on gaps",
        },
    ),
    (
        "--from-start",
        {
            "action": "store_const",
            "const": True,
            "help": "rescan every canonical row: repairs what --verify reports",
        },
    ),
    ("--source", {"help": "only this source (data-quality; verify of the index)"}),
    ("--pause-ms", {"type": int, "help": "pause between batches, to spare a busy database"}),
    ("--horizon-wait-s", {"type": float, "help": "wait for older transactions (default 30)"}),
    ("--stuck-after-s", {"type": int, "help": "manifest stuck threshold (default 900)"}),
    ("--window-s", {"type": int, "help": "DLQ and transient-failure window (default 86400)"}),
    ("--min-transient-failures", {"type": int, "help": "default 2"}),
    ("--list-limit", {"type": int, "help": "record ids listed per finding (default 50)"}),
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``jobs`` (``jobs run NAME …``, ``jobs list``) to the ``exchange-stream`` parser."""
    configure(subparsers.add_parser("jobs", help="derived datasets and data-quality checks"))


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="jobs_command", required=True)
    run_p = sub.add_parser("run", help="run a job in this process")
    run_p.add_argument("job", choices=sorted(JOBS), metavar="NAME", help=", ".join(sorted(JOBS)))
    for flag, spec in _OPTIONS:
        run_p.add_argument(flag, default=None, **spec)
    run_p.add_argument("--output", choices=("text", "json"), default="text")
    sub.add_parser("list", help="the jobs and their parameters")


def params_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The job parameters given on the command line (options left out are not passed)."""
    names = [flag[2:].replace("-", "_") for flag, _ in _OPTIONS]
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Entry point of ``exchange-stream jobs``; see the module docstring for exit codes."""
    if args.jobs_command == "list":
        _print_jobs(sys.stdout)
        return EXIT_OK
    job = JOBS[args.job]
    params = params_from_args(args)
    try:
        job.validate(params)
    except JobParamsError as exc:
        print(f"exchange-stream jobs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    line = ProgressLine(job.name)
    try:
        outcome = asyncio.run(_run_local(settings, job.name, params, line))
    finally:
        line.close()
    if args.output == "json":
        sys.stdout.write(orjson.dumps(_final(job.name, outcome)).decode() + "\n")
    else:
        print_text(job.name, outcome, sys.stdout)
    return exit_code(outcome)


def exit_code(outcome: JobOutcome) -> int:
    if outcome.status != "succeeded":
        return EXIT_FAILED
    if outcome.summary.get("ok") is False:
        return EXIT_GAPS
    return EXIT_OK


async def _run_local(
    settings: Settings, name: str, params: dict[str, Any], line: ProgressLine
) -> JobOutcome:
    async with local_context(settings) as ctx:

        async def on_progress(progress: dict[str, Any]) -> None:
            line.update(progress)

        return await run_job_recorded(ctx, name, params, on_progress)


def _final(name: str, outcome: JobOutcome) -> dict[str, Any]:
    return {
        "job": name,
        "job_run_id": str(outcome.job_run_id),
        "status": outcome.status,
        "error": outcome.error,
        "result": outcome.summary,
    }


# Text output ------------------------------------------------------------------------------


def print_text(name: str, outcome: JobOutcome, out: TextIO) -> None:
    """A human summary: a headline, then the job's table."""
    summary = outcome.summary
    out.write(f"{name}: {outcome.status} (job run {outcome.job_run_id})\n")
    if outcome.error:
        out.write(f"  error: {outcome.error}\n")
    mode = summary.get("mode")
    if mode == "verify":
        _print_verify(summary, out)
    elif mode in ("run", "dry_run"):
        _print_index_run(summary, out)
    elif "checks" in summary:
        _print_data_quality(summary, out)


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
    if s["params"]["from_start"]:
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


def _print_jobs(out: TextIO) -> None:
    for job in JOBS.values():
        out.write(f"{job.name}: {job.description}\n")
        for p in job.params:
            out.write(f"  {p.name} ({p.kind.__name__}, default {p.default!r}): {p.help}\n")


def main(argv: list[str] | None = None) -> int:
    """``python -m exchange_stream.jobs.cli run NAME …`` (the same as ``exchange-stream jobs``)."""
    from exchange_stream import logs
    from exchange_stream.config import ConfigError

    parser = argparse.ArgumentParser(prog="exchange-stream jobs", description=__doc__)
    configure(parser)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"exchange-stream: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logs.setup("WARNING")
    return run(settings, args)


if __name__ == "__main__":
    sys.exit(main())
