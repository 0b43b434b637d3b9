"""Sources as partners send them (a space, accents, URL-reserved characters) on the real services:
stored at ``<source>/<record_id>.json``, canonical, and found again by replay and reconcile."""

from __future__ import annotations

import uuid

import aiohttp
import asyncpg
import orjson

from exchange_stream.infra.config import Settings
from tests.conftest import SHARED_WORKER_ENV
from tests.payloads import new_key, v1_body, v2_body
from tests.support import (
    WorkerProcess,
    post_json,
    run_cli,
    s3_read_independently,
    wait_canonical,
    wait_offsets_committed,
)


async def _ingest(
    worker: WorkerProcess, http: aiohttp.ClientSession, version: str, source: str
) -> tuple[str, bytes]:
    body = v1_body(source=source) if version == "1" else v2_body(source=source)
    raw = orjson.dumps(body)
    status, resp, _ = await post_json(
        http, f"{worker.base_url}/v{version}/ingest", raw, key=new_key()
    )
    assert status == 202, resp
    return resp["record_id"], raw


async def test_sources_with_spaces_and_non_ascii_are_stored_canonical_replayed_and_reconciled(
    worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool, settings: Settings
) -> None:
    # A suffix of its own per run: replay and reconcile see every object of a source, ever.
    run = uuid.uuid4().hex[:8]
    hospital = f"Hospital A {run}"
    others = [f"Clinique Saint-Éloi \u2013 東京 {run}", f"100% a+b?c#d=%2F {run}"]
    sent = {
        (hospital, "1"): await _ingest(worker, http, "1", hospital),
        (hospital, "2"): await _ingest(worker, http, "2", hospital),
        **{(s, "2"): await _ingest(worker, http, "2", s) for s in others},
    }

    for (source, _), (record_id, raw) in sent.items():
        key = f"{source}/{record_id}.json"
        assert await s3_read_independently(settings, key) == raw, key
    ids = [record_id for record_id, _ in sent.values()]
    rows = await wait_canonical(db, ids)
    assert {(str(r["record_id"]), r["source"]) for r in rows} == {
        (record_id, source) for (source, _), (record_id, _) in sent.items()
    }
    manifest = await db.fetch(
        "SELECT source, object_key FROM raw_object_manifest WHERE record_id = ANY($1)",
        [uuid.UUID(i) for i in ids],
    )
    assert sorted(tuple(m) for m in manifest) == sorted(
        (source, f"{source}/{record_id}.json") for (source, _), (record_id, _) in sent.items()
    )
    # Settled: no redelivery of these events can race the replay below.
    await wait_offsets_committed(db, settings, ids, SHARED_WORKER_ENV["APP_ID"])

    hospital_ids = sorted(sent[(hospital, v)][0] for v in ("1", "2"))
    code, report = await run_cli("replay", "--source", hospital, "--verify")
    assert (code, report["result"]["gaps"]) == (0, 0), report

    # Replay reads the raw objects back through the service's own S3 client.
    await db.execute("DELETE FROM canonical_records WHERE source = $1", hospital)
    code, report = await run_cli("replay", "--source", hospital, "--verify")
    assert code == 3, report
    assert sorted(report["result"]["missing_record_ids"]) == hospital_ids
    code, report = await run_cli("replay", "--source", hospital, "--emit-version", "auto")
    assert code == 0, report
    assert (report["result"]["emitted"], report["result"]["uninferable"]) == (2, 0)
    rows = await wait_canonical(db, hospital_ids)
    assert {r["event_version"] for r in rows} == {"1", "2"}
    code, report = await run_cli("replay", "--source", hospital, "--verify")
    assert (code, report["result"]["gaps"]) == (0, 0), report

    code, report = await run_cli("reconcile", "--source", hospital, "--older-than-s", "0")
    assert code == 0, report
    assert report["result"]["raw_objects"] == 2
    assert sum(report["result"]["counts"].values()) == 0, report["result"]["counts"]
