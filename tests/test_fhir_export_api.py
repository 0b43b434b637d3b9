"""The FHIR Bulk Data API of a real worker (docs/API.md "Bulk export"): discovery, kick-off,
429, status, cancel and downloads, every refusal an OperationOutcome.

The worker runs at most one live export per recipient (``EXPORT_MAX_RUNNING=1``), and each test
has recipients of its own. Completed exports whose files a test serves are written here (the
row, and objects put in the export bucket with botocore), so that what the HTTP side answers is
proven apart from the export run; one test follows a kick-off through the real run.
"""

from __future__ import annotations

import asyncio
import gzip
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import jwt
import orjson
import pytest
import yarl
from fhir.resources.capabilitystatement import CapabilityStatement
from fhir.resources.operationoutcome import OperationOutcome

from exchange_stream.core.access_token import issue_access_token, signing_key
from exchange_stream.core.fhir import operation_outcome
from exchange_stream.infra.config import Settings
from exchange_stream.infra.sql import q
from tests.conftest import SHARED_WORKER_ENV
from tests.support import WorkerProcess, eventually, independent_s3_client, running_worker

KICKOFF_HEADERS = {"Accept": "application/fhir+json", "Prefer": "respond-async"}
LENIENT = {"Accept": "application/fhir+json", "Prefer": "respond-async, handling=lenient"}
FHIR_JSON = "application/fhir+json"
NDJSON = "application/fhir+ndjson"


@pytest.fixture(scope="module")
async def export_worker(
    migrated: None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WorkerProcess]:
    """A worker that lets a recipient run one export at a time."""
    env = {**SHARED_WORKER_ENV, "EXPORT_MAX_RUNNING": "1"}
    async with running_worker(tmp_path_factory.mktemp("export-api-worker"), env) as proc:
        yield proc


async def new_recipient(db: asyncpg.Pool, *, grant: bool = True) -> str:
    """A registered, active recipient; its grant allows one source nobody sends, so that an
    export the real run performs is quick and empty."""
    recipient = f"exp-{uuid.uuid4().hex[:12]}"
    await db.execute(q("recipients_ensure"), recipient)
    if grant:
        await db.execute(
            "INSERT INTO recipient_grants (recipient_id, sources, created_by) "
            "VALUES ($1, ARRAY['nobody-' || $1], 'test')",
            recipient,
        )
    return recipient


def jwt_for(settings: Settings, recipient: str | None, scope: str | None = "export") -> str:
    now = int(time.time())
    claims = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": recipient or "partner-1",
        "iat": now,
        "exp": now + 300,
    }
    if recipient is not None:
        claims["recipient"] = recipient
    if scope is not None:
        claims["scope"] = scope
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def smart_token(settings: Settings, recipient: str, kinds: set[str], scope: str) -> str:
    """An access token as POST /auth/token issues it for a SMART type scope."""
    return issue_access_token(
        signing_key(settings.access_token_signing_key),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        recipient=recipient,
        scope=scope,
        issued_at=int(time.time()),
        lifetime_s=300,
        kinds=kinds,
    )


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kw
) -> tuple[int, bytes, dict[str, str]]:
    async with http.request(method, url, **kw) as r:
        return r.status, await r.read(), dict(r.headers)


def outcome_of(status: int, body: bytes, headers: dict[str, str]) -> dict:
    """The OperationOutcome an answer carries, checked against the R4 model."""
    assert headers["Content-Type"].startswith(FHIR_JSON), (status, headers)
    doc = orjson.loads(body)
    OperationOutcome.parse_obj(doc)
    return doc


async def insert_export(
    db: asyncpg.Pool,
    recipient: str,
    status: str = "accepted",
    *,
    output: list | None = None,
    errors: list | None = None,
    expires_in_s: float | None = 3600,
    job_run_id: uuid.UUID | None = None,
    error: str | None = None,
) -> uuid.UUID:
    """An export row as the kick-off and the run would leave it, written directly."""
    export_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO exports (export_id, recipient_id, status, request_url, params, "
        "transaction_time, horizon, output, errors, expires_at, job_run_id, error) "
        "VALUES ($1, $2, $3, $4, $5, now(), pg_snapshot_xmin(pg_current_snapshot()), $6, $7, "
        "CASE WHEN $8::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => $8) END, "
        "$9, $10)",
        export_id,
        recipient,
        status,
        "http://example.test/fhir/$export",
        {
            "types": ["Encounter"],
            "since": None,
            "until": None,
            "type_filters": {},
            "output_format": NDJSON,
            "patient_level": False,
        },
        output or [],
        errors or [],
        expires_in_s,
        job_run_id,
        error,
    )
    return export_id


async def put_object(settings: Settings, key: str, body: bytes) -> None:
    async with independent_s3_client(settings) as s3:
        try:
            await s3.create_bucket(Bucket=settings.export_bucket)
        except Exception as exc:  # already there: created by a worker or an earlier test
            if "BucketAlready" not in type(exc).__name__ and "BucketAlready" not in str(exc):
                raise
        await s3.put_object(Bucket=settings.export_bucket, Key=key, Body=body)


def encounter_lines(n: int) -> bytes:
    return b"".join(
        orjson.dumps({"resourceType": "Encounter", "id": f"e{i}", "status": "finished"}) + b"\n"
        for i in range(n)
    )


# --- discovery ---------------------------------------------------------------------------


async def test_metadata_is_an_r4_capability_statement_naming_export_and_smart(
    export_worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    status, body, headers = await call(http, "GET", f"{export_worker.base_url}/fhir/metadata")
    assert status == 200
    assert headers["Content-Type"].startswith(FHIR_JSON)
    doc = orjson.loads(body)
    CapabilityStatement.parse_obj(doc)
    [rest] = doc["rest"]
    assert {op["name"] for op in rest["operation"]} == {"export"}
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert patient["operation"][0]["name"] == "export"
    [oauth] = rest["security"]["extension"]
    [token] = oauth["extension"]
    assert token["valueUri"] == f"{export_worker.base_url}/auth/token"
    assert rest["security"]["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    # No groups here: a Group-level kick-off is told so, as FHIR.
    status, body, headers = await call(
        http, "GET", f"{export_worker.base_url}/fhir/Group/g1/$export", headers=KICKOFF_HEADERS
    )
    assert status == 404
    assert outcome_of(status, body, headers)["issue"][0]["code"] == "not-supported"


# --- kick-off ----------------------------------------------------------------------------


async def test_kickoff_is_202_with_the_status_url_and_writes_the_export_and_its_command(
    export_worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    recipient = await new_recipient(db)
    query = "_type=Observation,Patient&_since=2024-01-01T00:00:00Z&_typeFilter=" + (
        "Observation%3Fcategory%3Dlaboratory"
    )
    url = f"{export_worker.base_url}/fhir/$export?{query}"
    headers = {**KICKOFF_HEADERS, **auth(jwt_for(settings, recipient))}
    # Sent as written (the client would decode the filter's %3F): the manifest's request is
    # the URL the client sent.
    status, body, answer = await call(http, "GET", yarl.URL(url, encoded=True), headers=headers)
    assert status == 202, body
    outcome_of(status, body, answer)
    location = answer["Content-Location"]
    prefix = f"{export_worker.base_url}/fhir/exports/"
    assert location.startswith(prefix)
    export_id = uuid.UUID(location.removeprefix(prefix))

    row = await db.fetchrow("SELECT * FROM exports WHERE export_id = $1", export_id)
    assert row["recipient_id"] == recipient
    assert row["request_url"] == url
    assert row["params"] == {
        "types": ["Patient", "Observation"],
        "since": "2024-01-01T00:00:00.000000Z",
        "until": None,
        "type_filters": {"Observation": {"category": ["laboratory"]}},
        "output_format": NDJSON,
        "patient_level": False,
    }
    assert row["errors"] == []
    command = await db.fetchrow(
        "SELECT topic, payload FROM outbox_events WHERE key = $1", str(export_id)
    )
    assert command["topic"] == settings.topic_exports
    assert command["payload"] == {
        "command_id": f"export:{export_id}",
        "command": "export",
        "params": {"export_id": str(export_id)},
        "requested_by": f"recipient:{recipient}",
    }


async def test_a_post_kickoff_takes_a_parameters_resource_or_a_form(
    export_worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    bodies = [
        {
            "json": {
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "_type", "valueString": "Encounter"},
                    {"name": "_type", "valueString": "Claim"},
                    {"name": "_until", "valueInstant": "2030-01-01T00:00:00+01:00"},
                ],
            }
        },
        {"data": {"_type": "Encounter,Claim", "_until": "2030-01-01T00:00:00+01:00"}},
    ]
    for body in bodies:
        recipient = await new_recipient(db)
        headers = {**KICKOFF_HEADERS, **auth(jwt_for(settings, recipient))}
        status, raw, _ = await call(
            http, "POST", f"{export_worker.base_url}/fhir/Patient/$export", headers=headers, **body
        )
        assert status == 202, raw
        params = await db.fetchval("SELECT params FROM exports WHERE recipient_id = $1", recipient)
        assert params["types"] == ["Encounter", "Claim"]
        assert params["until"] == "2029-12-31T23:00:00.000000Z"
        assert params["patient_level"] is True


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("_type=MedicationRequest", "not-supported"),
        ("_type=Encounter,Condition", "not-supported"),
        ("_outputFormat=text/csv", "not-supported"),
        ("_since=yesterday", "invalid"),
        ("_since=2024-01-01", "invalid"),
        ("_typeFilter=Observation%3Fcode%3D1234", "not-supported"),
        ("_elements=id", "not-supported"),
    ],
)
async def test_unsupported_or_malformed_parameters_are_400_operation_outcomes(
    export_worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
    query: str,
    code: str,
) -> None:
    recipient = await new_recipient(db)
    headers = {**KICKOFF_HEADERS, **auth(jwt_for(settings, recipient))}
    status, body, answer = await call(
        http, "GET", f"{export_worker.base_url}/fhir/$export?{query}", headers=headers
    )
    assert status == 400
    doc = outcome_of(status, body, answer)
    assert [(i["severity"], i["code"]) for i in doc["issue"]] == [("error", code)]
    assert "yesterday" not in body.decode() and "csv" not in body.decode()
    assert await db.fetchval("SELECT count(*) FROM exports WHERE recipient_id = $1", recipient) == 0


async def test_lenient_ignores_what_is_unsupported_and_reports_it_in_the_manifest(
    export_worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    """Through the real run: the kick-off answers what it set aside, the export runs, and the
    manifest's error file holds one OperationOutcome per ignored parameter."""
    recipient = await new_recipient(db)
    token = jwt_for(settings, recipient)
    query = "_type=Encounter,MedicationRequest&_typeFilter=Observation%3Fcode%3D1&_elements=id"
    status, body, answer = await call(
        http,
        "GET",
        yarl.URL(f"{export_worker.base_url}/fhir/$export?{query}", encoded=True),
        headers={**LENIENT, **auth(token)},
    )
    assert status == 202, body
    reported = outcome_of(status, body, answer)["issue"]
    assert len([i for i in reported if i["code"] == "not-supported"]) == 3
    location = answer["Content-Location"]

    manifest: dict = {}

    async def completed() -> bool:
        status, raw, headers = await call(http, "GET", location, headers=auth(token))
        assert status in (200, 202), raw
        if status == 202:
            assert headers["Retry-After"].isdigit() and len(headers["X-Progress"]) < 100
            return False
        assert headers["Content-Type"].startswith("application/json")
        assert "Expires" in headers
        manifest.update(orjson.loads(raw))
        return True

    await eventually(completed, timeout=120)
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"].endswith(f"/fhir/$export?{query}")
    assert manifest["output"] == []  # its one grant allows a source nobody sends
    [error_file] = manifest["error"]
    assert error_file["type"] == "OperationOutcome"
    status, raw, headers = await call(http, "GET", error_file["url"], headers=auth(token))
    assert status == 200 and headers["Content-Type"] == NDJSON
    lines = [orjson.loads(line) for line in raw.splitlines()]
    assert len(lines) == error_file["count"] == 3
    for line in lines:
        OperationOutcome.parse_obj(line)
        assert line["issue"][0]["severity"] == "information"


async def test_a_token_for_some_types_exports_those_and_refuses_others(
    export_worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    recipient = await new_recipient(db)
    token = smart_token(settings, recipient, {"encounter"}, "system/Encounter.read")
    url = f"{export_worker.base_url}/fhir/$export"
    status, body, answer = await call(
        http, "GET", f"{url}?_type=Claim", headers={**KICKOFF_HEADERS, **auth(token)}
    )
    assert status == 403
    assert outcome_of(status, body, answer)["issue"][0]["code"] == "forbidden"
    status, body, _ = await call(http, "GET", url, headers={**KICKOFF_HEADERS, **auth(token)})
    assert status == 202, body
    params = await db.fetchval("SELECT params FROM exports WHERE recipient_id = $1", recipient)
    assert params["types"] == ["Encounter"]


async def test_a_recipient_at_its_limit_gets_429_with_retry_after(
    export_worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    recipient = await new_recipient(db)
    blocking = await insert_export(db, recipient, "accepted")
    headers = {**KICKOFF_HEADERS, **auth(jwt_for(settings, recipient))}
    url = f"{export_worker.base_url}/fhir/$export"
    status, body, answer = await call(http, "GET", url, headers=headers)
    assert status == 429
    assert int(answer["Retry-After"]) > 0
    assert outcome_of(status, body, answer)["issue"][0]["code"] == "throttled"
    assert await db.fetchval("SELECT count(*) FROM exports WHERE recipient_id = $1", recipient) == 1
    # Another recipient is not held back by this one's exports.
    other = await new_recipient(db)
    status, _, _ = await call(
        http, "GET", url, headers={**KICKOFF_HEADERS, **auth(jwt_for(settings, other))}
    )
    assert status == 202
    # Once the live export ends, the next kick-off is accepted.
    await db.execute("UPDATE exports SET status = 'failed' WHERE export_id = $1", blocking)
    status, _, _ = await call(http, "GET", url, headers=headers)
    assert status == 202


async def test_concurrent_kickoffs_of_one_recipient_never_pass_the_limit(
    export_worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    recipient = await new_recipient(db)
    headers = {**KICKOFF_HEADERS, **auth(jwt_for(settings, recipient))}
    url = f"{export_worker.base_url}/fhir/$export"
    answers = await asyncio.gather(*(call(http, "GET", url, headers=headers) for _ in range(8)))
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [202] + [429] * 7, statuses
    assert await db.fetchval("SELECT count(*) FROM exports WHERE recipient_id = $1", recipient) == 1


# --- who may see an export ---------------------------------------------------------------


async def test_credentials_401_and_scopes_403_on_every_route(
    export_worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    recipient = await new_recipient(db)
    export_id = await insert_export(db, recipient, "completed")
    base = export_worker.base_url
    routes = [
        ("GET", f"{base}/fhir/$export"),
        ("POST", f"{base}/fhir/Patient/$export"),
        ("GET", f"{base}/fhir/exports/{export_id}"),
        ("DELETE", f"{base}/fhir/exports/{export_id}"),
        ("GET", f"{base}/fhir/exports/{export_id}/files/0"),
        ("GET", f"{base}/fhir/exports/{export_id}/errors/0"),
    ]
    revoked = await new_recipient(db)
    await db.execute("UPDATE recipients SET status = 'revoked' WHERE recipient_id = $1", revoked)
    unauthorized = [None, "garbage", jwt.encode({"recipient": recipient}, "wrong", "HS256")]
    forbidden = [
        jwt_for(settings, recipient, scope="records:read"),
        jwt_for(settings, None, scope="export"),  # a partner's
        jwt_for(settings, "never-registered", scope="export"),
        jwt_for(settings, revoked, scope="export"),
    ]
    for method, url in routes:
        for token in unauthorized:
            headers = {**KICKOFF_HEADERS, **(auth(token) if token else {})}
            status, body, answer = await call(http, method, url, headers=headers)
            assert status == 401, (method, url)
            assert answer["WWW-Authenticate"].startswith("Bearer")
            assert outcome_of(status, body, answer)["issue"][0]["code"] == "login"
        for token in forbidden:
            status, body, answer = await call(
                http, method, url, headers={**KICKOFF_HEADERS, **auth(token)}
            )
            assert status == 403, (method, url)
            assert outcome_of(status, body, answer)["issue"][0]["code"] == "forbidden"
    assert await db.fetchval("SELECT status FROM exports WHERE export_id = $1", export_id) == (
        "completed"
    ), "no refused request had an effect"


async def test_another_recipients_export_and_unknown_ids_are_the_same_404(
    export_worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    owner, other = await new_recipient(db), await new_recipient(db)
    export_id = await insert_export(db, owner, "completed", output=[])
    token = jwt_for(settings, other)
    base = f"{export_worker.base_url}/fhir/exports"
    answers = set()
    for path in [
        f"{export_id}",
        f"{uuid.uuid4()}",
        "not-an-id",
        f"{str(export_id).upper()}",
        f"{export_id}/files/0",
        f"{export_id}/errors/0",
    ]:
        status, body, answer = await call(http, "GET", f"{base}/{path}", headers=auth(token))
        assert status == 404, path
        outcome_of(status, body, answer)
        answers.add(body)
    status, body, _ = await call(http, "DELETE", f"{base}/{export_id}", headers=auth(token))
    assert status == 404
    answers.add(body)
    assert len(answers) == 1, "nothing tells another recipient's export from none"
    status, _, _ = await call(
        http, "GET", f"{base}/{export_id}", headers=auth(jwt_for(settings, owner))
    )
    assert status == 200


# --- status ------------------------------------------------------------------------------


async def test_a_live_export_is_202_with_progress_and_a_failed_one_500(
    export_worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    recipient = await new_recipient(db)
    token = jwt_for(settings, recipient)
    base = f"{export_worker.base_url}/fhir/exports"
    queued = await insert_export(db, recipient, "accepted")
    status, body, headers = await call(http, "GET", f"{base}/{queued}", headers=auth(token))
    assert (status, body, headers["X-Progress"]) == (202, b"", "queued")
    assert int(headers["Retry-After"]) > 0

    run_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO job_runs (job_run_id, job_name, status, progress) "
        "VALUES ($1, 'export', 'running', $2)",
        run_id,
        {"type": "Claim", "percent": 37, "resources": 12},
    )
    running = await insert_export(db, recipient, "running", job_run_id=run_id)
    status, _, headers = await call(http, "GET", f"{base}/{running}", headers=auth(token))
    assert (status, headers["X-Progress"]) == (202, "37% (Claim)")

    failed = await insert_export(
        db, recipient, "failed", error="StorageUnavailable: s3 host 10.1.2.3", expires_in_s=None
    )
    status, body, headers = await call(http, "GET", f"{base}/{failed}", headers=auth(token))
    assert status == 500
    assert outcome_of(status, body, headers)["issue"][0]["severity"] == "error"
    assert b"StorageUnavailable" not in body and b"10.1.2.3" not in body


async def test_delete_is_202_and_the_export_is_gone(
    export_worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    recipient = await new_recipient(db)
    token = jwt_for(settings, recipient)
    base = f"{export_worker.base_url}/fhir/exports"
    live = await insert_export(db, recipient, "running")
    done = await insert_export(db, recipient, "completed")
    for export_id in (live, done):
        status, body, headers = await call(
            http, "DELETE", f"{base}/{export_id}", headers=auth(token)
        )
        assert status == 202
        outcome_of(status, body, headers)
        for method in ("GET", "DELETE"):
            status, body, headers = await call(
                http, method, f"{base}/{export_id}", headers=auth(token)
            )
            assert status == 404, method
            assert outcome_of(status, body, headers)["issue"][0]["code"] == "not-found"
    rows = {
        r["export_id"]: r
        for r in await db.fetch(
            "SELECT export_id, status, expires_at <= now() AS expired FROM exports "
            "WHERE export_id = ANY($1)",
            [live, done],
        )
    }
    assert (rows[live]["status"], rows[live]["expired"]) == ("cancelled", True)
    # A completed export keeps its history; its files expire now, for the sweeper.
    assert (rows[done]["status"], rows[done]["expired"]) == ("completed", True)


async def test_an_expired_export_is_gone(
    export_worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    recipient = await new_recipient(db)
    export_id = await insert_export(db, recipient, "completed", expires_in_s=-1)
    status, _, _ = await call(
        http,
        "GET",
        f"{export_worker.base_url}/fhir/exports/{export_id}",
        headers=auth(jwt_for(settings, recipient)),
    )
    assert status == 404


# --- downloads ---------------------------------------------------------------------------


async def test_a_completed_export_serves_its_manifest_and_streams_its_files(
    export_worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    recipient = await new_recipient(db)
    token = jwt_for(settings, recipient)
    small, large = encounter_lines(3), encounter_lines(40_000)  # the latter some MiB
    prefix = f"test/{uuid.uuid4()}"
    await put_object(settings, f"{prefix}/Encounter.0.ndjson", small)
    await put_object(settings, f"{prefix}/Encounter.1.ndjson", large)
    info = operation_outcome([("information", "not-supported", "_elements is not supported")])
    export_id = await insert_export(
        db,
        recipient,
        "completed",
        output=[
            {
                "type": "Encounter",
                "key": f"{prefix}/Encounter.0.ndjson",
                "count": 3,
                "bytes": len(small),
            },
            {
                "type": "Encounter",
                "key": f"{prefix}/Encounter.1.ndjson",
                "count": 40_000,
                "bytes": len(large),
            },
        ],
        errors=[info],
    )
    status_url = f"{export_worker.base_url}/fhir/exports/{export_id}"
    status, body, headers = await call(http, "GET", status_url, headers=auth(token))
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert headers["Expires"].endswith("GMT")
    manifest = orjson.loads(body)
    assert manifest["requiresAccessToken"] is True
    assert manifest["output"] == [
        {"type": "Encounter", "url": f"{status_url}/files/0", "count": 3},
        {"type": "Encounter", "url": f"{status_url}/files/1", "count": 40_000},
    ]
    assert manifest["error"] == [
        {"type": "OperationOutcome", "url": f"{status_url}/errors/0", "count": 1}
    ]
    assert prefix not in body.decode(), "bucket keys stay inside"

    for entry, expected in zip(manifest["output"], (small, large), strict=True):
        status, raw, headers = await call(
            http, "GET", entry["url"], headers={**auth(token), "Accept-Encoding": "identity"}
        )
        assert status == 200 and headers["Content-Type"] == NDJSON
        assert "Content-Encoding" not in headers
        assert int(headers["Content-Length"]) == len(expected)
        assert raw == expected
        async with aiohttp.ClientSession(auto_decompress=False) as raw_http:
            status, raw, headers = await call(
                raw_http,
                "GET",
                entry["url"],
                headers={**auth(token), "Accept-Encoding": "gzip, deflate"},
            )
        assert status == 200 and headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(raw) == expected
        assert len(raw) < len(expected)

    status, raw, headers = await call(http, "GET", f"{status_url}/errors/0", headers=auth(token))
    assert status == 200 and headers["Content-Type"] == NDJSON
    assert [orjson.loads(line) for line in raw.splitlines()] == [info]
    for missing in ("files/2", "files/-1", "files/x", "errors/1"):
        status, _, _ = await call(http, "GET", f"{status_url}/{missing}", headers=auth(token))
        assert status == 404, missing

    # A token whose SMART scopes do not cover the file's type may not fetch it.
    claims_only = smart_token(settings, recipient, {"claim"}, "system/Claim.read")
    status, body, headers = await call(
        http, "GET", manifest["output"][0]["url"], headers=auth(claims_only)
    )
    assert status == 403
    outcome_of(status, body, headers)


async def test_a_file_missing_from_the_bucket_is_404(
    export_worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    recipient = await new_recipient(db)
    export_id = await insert_export(
        db,
        recipient,
        "completed",
        output=[
            {
                "type": "Encounter",
                "key": f"test/{uuid.uuid4()}/gone.ndjson",
                "count": 1,
                "bytes": 10,
            }
        ],
    )
    url = f"{export_worker.base_url}/fhir/exports/{export_id}/files/0"
    for encoding in ("identity", "gzip"):
        status, body, headers = await call(
            http,
            "GET",
            url,
            headers={**auth(jwt_for(settings, recipient)), "Accept-Encoding": encoding},
        )
        assert status == 404, encoding
        outcome_of(status, body, headers)
