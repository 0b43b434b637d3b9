"""What every worker does for bulk exports: run the exports the topic brings, sweep old files.

The export agent reads the exports topic (``TOPIC_EXPORTS``; one command a kick-off enqueued per
export, keyed by its id) with ``EXPORT_CONCURRENCY`` actors, and hands each command to the
control plane (``ops/control.py``): the same claim by command id, heartbeat, takeover of a run
whose worker died, fencing by execution number and ``job_runs`` row as every other operation.
A message is acknowledged once its run has ended (or was fenced off), so a worker that dies
mid-export leaves the message to the worker its partition moves to, which takes the run over.

The sweeper, on every worker, deletes the files of exports that expired (``expires_at``
passed), were cancelled or failed, and marks them ``files_deleted_at``; the rows it works on are
locked and skipped by the other workers' sweepers, so N workers delete each export's files once.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import faust

from exchange_stream.infra.export_store import ExportStore
from exchange_stream.infra.runtime import Runtime
from exchange_stream.infra.sql import q
from exchange_stream.infra.topics import raw_topic
from exchange_stream.ops.control import ControlPlane
from exchange_stream.ops.export import export_prefix
from exchange_stream.ops.framework import OpsContext

log = logging.getLogger(__name__)

SWEEP_BATCH = 20
# Files outlive their expiry by at most about 1% of the retention, and a minute at most.
SWEEP_MIN_INTERVAL_S = 1.0
SWEEP_MAX_INTERVAL_S = 60.0


def sweep_interval_s(retention_hours: float) -> float:
    """How often each worker's sweeper looks for files to delete."""
    return min(SWEEP_MAX_INTERVAL_S, max(SWEEP_MIN_INTERVAL_S, retention_hours * 36.0))


async def sweep(pool: asyncpg.Pool, store: ExportStore, *, silent_after_s: float) -> int:
    """Delete the files of up to ``SWEEP_BATCH`` exports due for it; how many exports. The
    rows stay locked while their objects are deleted, and are marked in the same
    transaction: a sweeper that dies half-way leaves them for the next one."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(q("export_sweep_claim"), SWEEP_BATCH, silent_after_s)
        if not rows:
            return 0
        ids = [r["export_id"] for r in rows]
        deleted = 0
        for export_id in ids:
            deleted += await store.delete_prefix(export_prefix(export_id))
        await conn.execute(q("export_sweep_done"), ids)
    log.info("export files deleted", extra={"fields": {"exports": len(ids), "objects": deleted}})
    return len(ids)


def register(app: faust.App, runtime: Runtime) -> None:
    """Declare the export agent and the sweeper's timer on ``app``."""
    settings = runtime.settings
    plane: ControlPlane | None = None

    @app.agent(
        raw_topic(app, settings, settings.topic_exports),
        name="exports",
        concurrency=settings.export_concurrency,
    )
    async def export_agent(stream: faust.StreamT) -> None:
        nonlocal plane
        async for value in stream:
            if plane is None:
                # The runtime's resources exist once the worker has started.
                plane = ControlPlane(
                    OpsContext(
                        settings,
                        runtime.work_pool,
                        runtime.store,
                        runtime.publisher,
                        export_store=runtime.export_store,
                    )
                )
            await plane.handle(value)

    @app.timer(sweep_interval_s(settings.export_retention_hours), on_leader=False)
    async def sweep_export_files() -> None:
        try:
            while await sweep(
                runtime.work_pool,
                runtime.export_store,
                silent_after_s=float(settings.control_takeover_after_s),
            ):
                pass
        except Exception as exc:
            # Postgres or S3 away: the next tick tries again.
            fields: dict[str, Any] = {"error_type": type(exc).__name__}
            log.warning("export sweep failed", extra={"fields": fields})
