"""Rerun the fault matrix and the hostile-input suite, and write ``docs/RELIABILITY.md``.

    .venv/bin/python scripts/reliability_report.py            # default variants (~3 min)
    .venv/bin/python scripts/reliability_report.py --long     # also the long variants

The stack is whatever the environment points at (``STACK_DIR``, ``POSTGRES_PORT``, ``KAFKA_PORT``,
``S3_PORT``, ``KAFKA_BROKERS``, ``MINIO_ENDPOINT``); the fault tests stop and start its services,
so run this against a stack nobody else is using. Each fault test writes its figures as JSON into
``RELIABILITY_OUT``; the fuzzing test writes its counts to ``FUZZ_STATS_PATH``; pytest's JUnit XML
gives every test's outcome. The report is built from those files alone.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTEST = ROOT / ".venv" / "bin" / "pytest"
FAULTS = ROOT / "tests" / "faults"
HOSTILE_GLOB = "test_hostile_*.py"
# The order of issue 7's list; a module not named here comes last.
FAULT_ORDER = ["worker_sigkill", "kafka_restart", "postgres_restart", "s3_restart", "orphans"]
STACK_VARS = (
    "STACK_DIR",
    "POSTGRES_PORT",
    "KAFKA_PORT",
    "S3_PORT",
    "KAFKA_BROKERS",
    "MINIO_ENDPOINT",
)


@dataclass(frozen=True)
class Outcome:
    """One test case as JUnit XML recorded it."""

    module: str
    name: str
    status: str
    seconds: float


@dataclass(frozen=True)
class Suite:
    """One pytest run: what was run and how each test ended."""

    label: str
    command: list[str]
    exit_code: int
    seconds: float
    outcomes: list[Outcome]


def run_pytest(label: str, paths: list[str], work: Path, env: dict[str, str]) -> Suite:
    """Run pytest on ``paths`` with JUnit XML into ``work``; never raises on test failures."""
    xml = work / f"{label}.xml"
    command = [
        str(PYTEST),
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={xml}",
        f"--basetemp={work / f'tmp-{label}'}",
        *paths,
    ]
    print(f"reliability: {label}: {shlex.join(command)}", flush=True)
    started = dt.datetime.now(dt.UTC)
    result = subprocess.run(command, cwd=ROOT, env=env, check=False)  # noqa: S603 (fixed argv)
    seconds = (dt.datetime.now(dt.UTC) - started).total_seconds()
    shown = [*(["FAULTS_LONG=1"] if env.get("FAULTS_LONG") else []), "pytest", "-q", *paths]
    return Suite(label, shown, result.returncode, seconds, read_junit(xml))


def read_junit(path: Path) -> list[Outcome]:
    if not path.exists():
        return []
    outcomes = []
    # The XML is the one pytest just wrote, not outside input.
    for case in ET.parse(path).getroot().iter("testcase"):  # noqa: S314
        status = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                status = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
        outcomes.append(
            Outcome(
                module=case.get("classname", ""),
                name=case.get("name", ""),
                status=status,
                seconds=float(case.get("time", "0") or 0),
            )
        )
    return outcomes


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    mem_kib = 0
    model = platform.processor() or platform.machine()
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "cpu": model,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def docstring_body(path: Path) -> list[str]:
    """The paragraphs after the title line of a module's docstring, each on one line, with
    reStructuredText literals as Markdown code."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    paragraphs = [" ".join(p.split()) for p in doc.split("\n\n") if p.strip()]
    return [p.replace("``", "`") for p in paragraphs[1:]]


def _seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f} s"


def _recovery(values: list[float | None]) -> str:
    if not values:
        return "-"
    if None in values:
        return "not reached"
    shown = ", ".join(f"{v:.1f}" for v in values if v is not None)
    return f"{shown} s" if len(values) == 1 else f"max {max(values):.1f} s ({shown})"


def _load(doc: dict[str, Any]) -> str:
    load = doc["load"]
    return f"{load['rate_per_s']:g}/s for {load['seconds']:g} s, {load['clients']} clients"


def _details(details: dict[str, Any]) -> str:
    parts = []
    for key, value in details.items():
        label = key.replace("_", " ")
        parts.append(f"{label}: {json.dumps(value, separators=(', ', ': '))}")
    return "; ".join(parts)


def _dead_lettered(doc: dict[str, Any]) -> str:
    details = doc["details"]
    if "dead_lettered" not in details:
        return "-"
    outages = [r["down_s"] for r in details.get("rounds", []) if "down_s" in r]
    down = f" (outages {', '.join(f'{d:g} s' for d in outages)})" if outages else ""
    return f"{details['dead_lettered']}{down}"


def _fault_order(fault: str, title: str) -> tuple[int, str]:
    return (FAULT_ORDER.index(fault) if fault in FAULT_ORDER else len(FAULT_ORDER), title)


def fault_sections(docs: list[dict[str, Any]], outcomes: dict[str, str]) -> list[str]:
    """A table per fault (one row per variant), with how it is injected and what else was seen."""
    lines: list[str] = []
    by_case: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for doc in docs:
        by_case.setdefault((doc["fault"], doc["case"]), []).append(doc)
    shown_intro: set[str] = set()
    for (fault, _case), variants in sorted(
        by_case.items(), key=lambda kv: _fault_order(kv[0][0], kv[1][0]["title"])
    ):
        variants.sort(key=lambda d: d["variant"] != "default")
        lines += [f"### {variants[0]['title']}", ""]
        if fault not in shown_intro:
            shown_intro.add(fault)
            for paragraph in docstring_body(FAULTS / f"test_{fault}.py"):
                lines += [paragraph, ""]
        lines += [
            "| variant | load | duration | accepted (202) | canonical rows | lost | duplicated "
            "| dead-lettered | 503s | time to recover | settled after load | test |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for doc in variants:
            outcome = outcomes.get(f"{doc['case']}[{doc['variant']}]", "not run")
            lines.append(
                f"| {doc['variant']} | {_load(doc)} | {doc['duration_s']:.1f} s "
                f"| {doc['accepted']} | {doc['canonical_rows']} | {doc['lost']} "
                f"| {doc['duplicated']} | {_dead_lettered(doc)} | {doc['statuses'].get('503', 0)} "
                f"| {_recovery(doc['recover_s'])} | {_seconds(doc['settle_s'])} | {outcome} |"
            )
        lines.append("")
        for doc in variants:
            seen = {
                "requests": doc["load"]["requests"],
                "client errors": doc["errors"],
                "Retry-After": doc["retry_after"],
            }
            lines.append(f"- {doc['variant']}: {_details(seen)}; {_details(doc['details'])}")
        lines.append("")
    return lines


def hostile_section(suites: list[Suite], stats: list[tuple[str, dict[str, Any]]]) -> list[str]:
    lines = [
        "| module | tests | passed | failed | errors | skipped | time |",
        "|---|---|---|---|---|---|---|",
    ]
    modules: dict[str, list[Outcome]] = {}
    for suite in suites:
        for o in suite.outcomes:
            modules.setdefault(o.module.split("[")[0], []).append(o)
    for module, outcomes in sorted(modules.items()):
        count = {s: sum(o.status == s for o in outcomes) for s in ("passed", "failed", "error")}
        skipped = sum(o.status == "skipped" for o in outcomes)
        lines.append(
            f"| `{module}` | {len(outcomes)} | {count['passed']} | {count['failed']} "
            f"| {count['error']} | {skipped} | {sum(o.seconds for o in outcomes):.1f} s |"
        )
    if not modules:
        lines.append("| (no hostile-input tests found) | 0 | 0 | 0 | 0 | 0 | - |")
    lines.append("")
    for name, doc in stats:
        lines += [f"Counts written by the suite (`{name}`):", "", "| count | value |", "|---|---|"]
        for key, value in sorted(doc.items()):
            shown = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value
            lines.append(f"| {key.replace('_', ' ')} | {shown} |")
        lines.append("")
    return lines


def render(
    args: argparse.Namespace,
    suites: list[Suite],
    fault_docs: list[dict[str, Any]],
    stats: list[tuple[str, dict[str, Any]]],
    started: dt.datetime,
) -> str:
    host = machine()
    faults = next((s for s in suites if s.label == "faults"), None)
    outcomes = {o.name: o.status for o in faults.outcomes} if faults else {}
    stack = " ".join(f"{k}={os.environ[k]}" for k in STACK_VARS if os.environ.get(k))
    command = shlex.join(["python", "scripts/reliability_report.py", *sys.argv[1:]])
    lines = [
        "# Reliability",
        "",
        "Generated by `scripts/reliability_report.py`; rerun it to refresh every figure below.",
        "",
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{command}`" + (f" with `{stack}`" if stack else ""),
        f"- machine: {host['nproc']} CPUs ({host['cpu']}), {host['memory']} memory, "
        f"{host['kernel']}, Python {host['python']}; the load generator, the workers, Postgres, "
        "Kafka and S3 share it, and so may other work: times are one run's, not a benchmark",
    ]
    for suite in suites:
        lines.append(
            f"- {suite.label}: `{shlex.join(suite.command)}` — exit {suite.exit_code}, "
            f"{suite.seconds:.0f} s"
        )
    lines += [
        "",
        "## Fault matrix",
        "",
        "Each fault test drives steady ingest from a second process (`tests/loadgen.py`: a fixed "
        "rate, a few concurrent clients, every failed request retried with the same "
        "`Idempotency-Key` and body until its 202) against workers with their own topics and "
        "consumer group, injects the fault, and then checks every accepted record end to end. "
        "The invariant (`tests/faults/common.py`): each 202 has exactly one canonical row and the "
        "test's source has no other; no two canonical rows share a raw body; the outbox has no "
        "unpublished row for them; their ledger stage state is `succeeded` (none left `running`) "
        "and their manifest `canonicalized`. Every test also requires that each request got its "
        "202 in the end and that the front door answered nothing but 202 and 503 (with "
        "`Retry-After`).",
        "",
        "- **lost**: 202s without a canonical row once the test gave up waiting; **duplicated**: "
        "canonical rows of the source repeating another's raw body.",
        "- **time to recover**: from the service answering again (the restarted worker healthy, "
        "the broker or server up; for a killed worker beside a survivor, from the kill) until "
        "every record accepted up to then is canonical, published and `succeeded`; one value per "
        "fault injected. **settled after load**: from the load generator's end until the "
        "invariant held for all its records (for the orphan test, including the reconcile "
        "repair).",
        "",
    ]
    if args.long:
        lines += ["Long variants were run (`--long`).", ""]
    else:
        lines += ["Default variants only; `--long` adds the long ones.", ""]
    lines += fault_sections(fault_docs, outcomes)
    unmeasured = sorted(
        name
        for name, status in outcomes.items()
        if status != "skipped"
        and not any(f"{d['case']}[{d['variant']}]" == name for d in fault_docs)
    )
    if unmeasured:
        lines += ["Fault tests that wrote no figures: " + ", ".join(unmeasured), ""]
    lines += ["## Hostile input", ""]
    lines += hostile_section([s for s in suites if s.label == "hostile"], stats)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long", action="store_true", help="also run the long fault variants")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "RELIABILITY.md")
    parser.add_argument("--no-hostile", action="store_true", help="skip the hostile-input suite")
    args = parser.parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        work = Path(tmp)
        figures = work / "figures"
        env = {**os.environ, "RELIABILITY_OUT": str(figures)}
        fault_env = {**env, "FAULTS_LONG": "1"} if args.long else env
        suites = [run_pytest("faults", ["tests/faults"], work, fault_env)]
        hostile = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob(HOSTILE_GLOB))
        if hostile and not args.no_hostile:
            hostile_env = {**env, "FUZZ_STATS_PATH": str(figures / "hostile_fuzz_stats.json")}
            suites.append(run_pytest("hostile", hostile, work, hostile_env))
        fault_docs: list[dict[str, Any]] = []
        stats: list[tuple[str, dict[str, Any]]] = []
        for path in sorted(figures.glob("*.json")) if figures.exists() else []:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(doc, dict) and doc.get("kind") == "fault":
                fault_docs.append(doc)
            elif isinstance(doc, dict):
                stats.append((path.name, doc))
        report = render(args, suites, fault_docs, stats, started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    print(f"reliability: wrote {args.out}")
    return 0 if all(s.exit_code == 0 for s in suites) else 1


if __name__ == "__main__":
    sys.exit(main())
