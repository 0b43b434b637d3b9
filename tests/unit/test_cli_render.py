"""The CLI's text and JSON forms of every operation's result, without a service.

The results below have the shapes the operations return (``exchange_stream/ops/``);
``tests/test_cli_output.py`` checks the same properties on results of real runs.
"""

from __future__ import annotations

import io
import re
import uuid
from typing import Any

import pytest

from exchange_stream.cli import operations
from exchange_stream.cli.render import RENDERERS, print_text, value_text, write_tree
from exchange_stream.ops.control import result_message
from exchange_stream.ops.reconcile import CATEGORIES
from exchange_stream.ops.registry import OPERATIONS

RID = [str(uuid.UUID(int=i + 1)) for i in range(30)]
CURSOR = {"insert_xid": "812", "record_id": RID[0]}
KEYS_V1_V2 = [
    {"version": 1, "status": "retired", "created_at": "2026-01-01T10:00:00+00:00"},
    {"version": 2, "status": "active", "created_at": "2026-02-01T10:00:00.5+00:00"},
]

REPLAY_COUNTS = {
    "listed": 10,
    "uninferable": 1,
    "unparseable": 0,
    "incompatible": 1,
    "unrecognised_key": 0,
    "vanished": 0,
}
INDEX_RUN = {
    "batch_size": 500,
    "from_start": True,
    "batches": 2,
    "scanned": 700,
    "skipped_no_token": 3,
    "started_from": CURSOR,
    "cursor": CURSOR,
    "pending": 0,
    "horizon_wait_timed_out": False,
    "elapsed_s": 0.4,
    "rows_per_s": 1750,
}
FINDING = {"count": 2, "record_ids": RID[:2]}
NO_FINDING: dict[str, Any] = {"count": 0, "record_ids": []}

# (operation, status, result): successes of every operation and mode, and failures.
RESULTS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "replay",
        "succeeded",
        {
            "source": "hospital-a",
            "dry_run": False,
            "emit_version": "auto",
            **REPLAY_COUNTS,
            "emitted": 8,
            "samples": {"uninferable": ["hospital-a/x.json"], "incompatible": ["hospital-a/y"]},
        },
    ),
    (
        "replay",
        "succeeded",
        {
            "source": "hospital-a",
            "dry_run": True,
            "emit_version": "v2",
            **REPLAY_COUNTS,
            "would_emit": 8,
            "samples": {"uninferable": ["hospital-a/x.json"]},
        },
    ),
    (
        "replay",
        "succeeded",
        {
            "source": "hospital-a",
            "verify": True,
            "raw_objects": 30,
            "gaps": 30,
            "missing_record_ids": RID,
            "unrecognised_keys": 1,
        },
    ),
    (
        "reconcile",
        "succeeded",
        {
            "source": "lab-a",
            "raw_objects": 4,
            "unrecognised_keys": 0,
            "counts": {c: (2 if c == "outbox_stuck" else 0) for c in CATEGORIES},
            "records": {c: (RID[:2] if c == "outbox_stuck" else []) for c in CATEGORIES},
            "outbox_stuck_rows": [
                {
                    "outbox_id": 7,
                    "record_id": RID[0],
                    "topic": "record.ingested.v2",
                    "attempts": 3,
                    "last_error": "UnknownTopicOrPartitionError",
                    "next_attempt_at": "2026-03-01T10:00:00Z",
                },
                {
                    "outbox_id": 8,
                    "record_id": None,
                    "topic": "record.ingested.v2",
                    "attempts": 1,
                    "last_error": None,
                    "next_attempt_at": None,
                },
            ],
            "repair": True,
            "actions": {"reenqueued": 2, "orphaned": 1},
        },
    ),
    (
        "reconcile",
        "succeeded",
        {
            "source": "lab-a",
            "raw_objects": 0,
            "unrecognised_keys": 0,
            "counts": dict.fromkeys(CATEGORIES, 0),
            "records": {c: [] for c in CATEGORIES},
            "outbox_stuck_rows": [],
            "repair": False,
        },
    ),
    (
        "dlq_redrive",
        "succeeded",
        {
            "version": "v2",
            "dlq_topic": "record.ingested.v2.dlq",
            "target_topic": "record.ingested.v2",
            "redriven": 3,
            "skipped_unparseable": 1,
            "remaining": 0,
        },
    ),
    ("recipients_add", "succeeded", {"recipient": "payer-x", "status": "active", "version": 1}),
    (
        "recipients_add",
        "succeeded",
        {"recipient": "payer-x", "status": "active", "version": 1, "jwks_keys": 2},
    ),
    ("recipients_add", "failed", {"recipient": "payer-x"}),
    ("recipients_set_jwks", "succeeded", {"recipient": "payer-x", "jwks_keys": 1}),
    (
        "recipients_list",
        "succeeded",
        {
            "count": 2,
            "recipients": [
                {
                    "recipient": "payer-x",
                    "status": "active",
                    "current_version": 2,
                    "resolvable_versions": [2],
                    "keys": KEYS_V1_V2,
                    "jwks_keys": 2,
                    "created_at": "2026-01-01T10:00:00.123456+00:00",
                    "revoked_at": None,
                },
                {
                    "recipient": "lab-research",
                    "status": "revoked",
                    "current_version": None,
                    "resolvable_versions": [],
                    "keys": KEYS_V1_V2[:1],
                    "jwks_keys": None,
                    "created_at": "2026-01-02T10:00:00+00:00",
                    "revoked_at": "2026-03-02T10:00:00+00:00",
                },
            ],
        },
    ),
    ("recipients_list", "succeeded", {"count": 0, "recipients": []}),
    (
        "recipients_rotate_key",
        "succeeded",
        {"recipient": "payer-x", "current_version": 3, "resolvable_versions": [2, 3]},
    ),
    (
        "recipients_retire_key",
        "succeeded",
        {"recipient": "payer-x", "retired_version": 2, "resolvable_versions": [3]},
    ),
    ("recipients_retire_key", "failed", {"recipient": "payer-x", "version": 3}),
    ("recipients_revoke", "succeeded", {"recipient": "payer-x", "status": "revoked"}),
    (
        "recipients_grant",
        "succeeded",
        {
            "recipient": "payer-x",
            "grant": {
                "grant_id": 7,
                "sources": ["hospital-a"],
                "kinds": None,
                "from": "2024-01-01",
                "until": None,
                "created_at": "2026-12-03T08:00:00+00:00",
                "revoked_at": None,
            },
        },
    ),
    (
        "recipients_grants",
        "succeeded",
        {
            "recipient": "payer-x",
            "count": 1,
            "grants": [
                {
                    "grant_id": 7,
                    "sources": ["hospital-a"],
                    "kinds": None,
                    "from": "2024-01-01",
                    "until": None,
                    "created_at": "2026-12-03T08:00:00+00:00",
                    "revoked_at": None,
                }
            ],
        },
    ),
    ("recipients_revoke_grant", "succeeded", {"recipient": "payer-x", "revoked_grant": 7}),
    ("recipients_revoke_grant", "failed", {"recipient": "payer-x", "grant_id": 7}),
    ("opt_outs_add", "succeeded", {"accepted": 3, "opt_outs": 12}),
    ("opt_outs_remove", "succeeded", {"accepted": 1, "opt_outs": 11}),
    (
        "export",
        "succeeded",
        {"export_id": "5f0c1f5e-0000-4000-8000-000000000001", "files": 2, "resources": 10},
    ),
    (
        "materialize-patient-index",
        "succeeded",
        {
            "mode": "run",
            **INDEX_RUN,
            "inserted": 690,
            "updated": 7,
            "written": 697,
            "orphans_removed": 1,
        },
    ),
    (
        "materialize-patient-index",
        "succeeded",
        {
            "mode": "dry_run",
            **INDEX_RUN,
            "would_insert": 690,
            "would_update": 7,
            "would_remove_orphans": 1,
            "sample_record_ids": RID[:3],
        },
    ),
    (
        "materialize-patient-index",
        "succeeded",
        {
            "mode": "verify",
            "source": None,
            "cursor": CURSOR,
            "canonical_rows": 10,
            "index_rows": 9,
            "missing": FINDING,
            "orphaned": NO_FINDING,
            "mismatched": NO_FINDING,
            "pending": NO_FINDING,
            "unindexable_no_token": NO_FINDING,
            "gaps": 2,
            "ok": False,
        },
    ),
    (
        "data-quality",
        "succeeded",
        {
            "source": "lab-a",
            "thresholds": {"stuck_after_s": 900, "window_s": 86400, "min_transient_failures": 2},
            "checked_at": "2026-03-01T10:00:00+00:00",
            "issues_total": 4,
            "clean": False,
            "checks": {
                "canonical_without_token": {**FINDING, "description": "without a token"},
                "repeated_transient_failures": {
                    **FINDING,
                    "description": "repeated failures",
                    "failures": {RID[0]: 3, RID[1]: 2},
                },
            },
            "dlq_by_stage_type": [{"stage": "map", "type": "MappingError", "count": 2}],
            "elapsed_s": 0.05,
        },
    ),
    ("data-quality", "failed", {}),
    (
        "link-persons",
        "succeeded",
        {
            "batches": 2,
            "linked": 250,
            "no_identity": 1,
            "batch_size": 200,
            "started_from": "00000000-0000-0000-0000-000000000000",
            "cursor": "f1e2d3c4-0000-4000-8000-000000000000",
            "elapsed_s": 0.4,
            "rows_per_s": 625,
        },
    ),
]
# A Python repr: of a dict or list ({ [ ]), of a string inside one ('…': / ['… / …'] / ', ') or
# of a value (None, True, False, UUID(…), datetime.…(…)).
REPR = re.compile(
    r"[{}\[\]]|['\"]\s*[:,\])}]|[(\[{,]\s*['\"]|\b(?:None|True|False)\b"
    r"|\b(?:UUID|datetime|date|Decimal|Record)\("
)


def _final(operation: str, status: str, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "operation": operation,
        "command_id": None,
        "job_run_id": str(uuid.UUID(int=99)),
        "status": status,
        "previous_status": None,
        "result": result,
        "error": "no such recipient" if status == "failed" else None,
        "runner": "host:1",
        "local": True,
    }


def _text(final: dict[str, Any]) -> str:
    out = io.StringIO()
    print_text(final, out)
    return out.getvalue()


def test_every_operation_has_a_text_form() -> None:
    assert set(RENDERERS) == set(OPERATIONS)
    assert {name for name, _, _ in RESULTS} == set(OPERATIONS)


@pytest.mark.parametrize(("operation", "status", "result"), RESULTS)
def test_no_text_output_is_a_python_repr(
    operation: str, status: str, result: dict[str, Any]
) -> None:
    for final in (
        _final(operation, status, result),
        {**_final(operation, "duplicate", result), "previous_status": status},
    ):
        text = _text(final)
        assert text.startswith(f"{operation}: ")
        for line in text.splitlines():
            assert not REPR.search(line), line


def test_a_dry_run_replay_says_what_it_would_emit() -> None:
    (dry,) = [r for name, _, r in RESULTS if name == "replay" and r.get("dry_run")]
    text = _text(_final("replay", "succeeded", dry))
    assert "would emit 8" in text and "nothing emitted" in text
    assert "emitted 8" not in text.replace("would emit 8", "")
    (real,) = [r for name, _, r in RESULTS if name == "replay" and r.get("dry_run") is False]
    text = _text(_final("replay", "succeeded", real))
    assert "emitted 8" in text and "would" not in text


def test_a_dry_run_index_says_what_it_would_write() -> None:
    (dry,) = [r for _, _, r in RESULTS if r.get("mode") == "dry_run"]
    text = _text(_final("materialize-patient-index", "succeeded", dry))
    assert "nothing written" in text and "would insert" in text and "would remove" in text


def test_recipients_list_is_one_aligned_row_per_recipient() -> None:
    (listed,) = [r for name, _, r in RESULTS if name == "recipients_list" and r["count"]]
    lines = _text(_final("recipients_list", "succeeded", listed)).splitlines()
    header = next(line for line in lines if "recipient" in line and "status" in line)
    rows = lines[lines.index(header) + 1 :]
    assert [r.split()[0] for r in rows] == ["payer-x", "lab-research"]
    assert ["created" in header, "retired keys" in header] == [True, True]
    status_at = header.index("status")
    assert [r[status_at:].split()[0] for r in rows] == ["active", "revoked"]
    # Times to the second in UTC, no microseconds; none shown as "-".
    assert "2026-01-01T10:00:00Z" in rows[0] and ".123456" not in rows[0]
    assert rows[0].rstrip().endswith("-") and "2026-03-02T10:00:00Z" in rows[1]


def test_a_failed_run_shows_its_error_and_what_it_found() -> None:
    text = _text(_final("recipients_retire_key", "failed", {"recipient": "p", "version": 3}))
    assert text.splitlines() == [
        f"recipients_retire_key: failed (job run {uuid.UUID(int=99)})",
        "  error: no such recipient",
        "  recipient: p",
        "  version: 3",
    ]


def test_a_result_without_a_renderer_is_key_value_lines_and_tables() -> None:
    out = io.StringIO()
    write_tree(
        out,
        {
            "counts": {"a_b": 1, "ok": True, "none": None},
            "ids": RID[:12],
            "rows": [{"id": 1, "kind": "x"}, {"id": 22, "kind": None}],
            "empty": [],
        },
        indent=1,
    )
    assert out.getvalue().splitlines() == [
        "  counts:",
        "    a b: 1",
        "    ok: yes",
        "    none: -",
        "  ids: " + ", ".join(RID[:10]) + " … (+2 more)",
        "  rows:",
        "    id  kind",
        "     1  x",
        "    22  -",
        "  empty: none",
    ]


def test_values_are_written_as_a_reader_writes_them() -> None:
    assert [value_text(v) for v in (None, False, [1, 2], {"a": [1], "b": None}, 3.5)] == [
        "-",
        "no",
        "1, 2",
        "a=1, b=-",
        "3.5",
    ]


def test_jobs_list_shows_defaults_as_the_contract_writes_them() -> None:
    out = io.StringIO()
    operations.print_jobs(out)
    text = out.getvalue()
    assert "default false" in text and "default 500" in text
    for line in text.splitlines():
        assert not REPR.search(line), line


def test_the_json_object_has_the_same_keys_locally_and_from_a_worker() -> None:
    op = OPERATIONS["recipients_list"]
    result = {"count": 0, "recipients": []}
    from_worker = result_message(
        "cmd-00000001",
        "succeeded",
        command=op.name,
        job_run_id=uuid.uuid4(),
        progress={"done": 1},
        result=result,
        runner="worker:1",
    )
    local = {
        "command_id": None,
        "job_run_id": str(uuid.uuid4()),
        "status": "succeeded",
        "result": result,
        "error": None,
        "runner": "cli:2",
    }
    worker_doc = operations.output(op, from_worker, local=False)
    local_doc = operations.output(op, local, local=True)
    assert (
        list(worker_doc)
        == list(local_doc)
        == [
            "operation",
            "command_id",
            "job_run_id",
            "status",
            "previous_status",
            "result",
            "error",
            "runner",
            "local",
        ]
    )
    assert worker_doc["result"] == local_doc["result"] == result
    assert (worker_doc["local"], local_doc["local"]) == (False, True)
    # A job sent as run_job is still named by the job.
    job = OPERATIONS["data-quality"]
    sent_as_job = result_message("cmd-00000002", "failed", command="run_job", error="x")
    assert operations.output(job, sent_as_job, local=False)["operation"] == "data-quality"
    assert operations.output(job, sent_as_job, local=False)["result"] == {}
