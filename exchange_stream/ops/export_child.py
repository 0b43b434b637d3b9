"""``python -m exchange_stream.ops.export_child``: the process one export runs in.

Started by the worker running the export (``ops/export_process.py`` says why and how they
talk). It reads the claim from stdin, opens its own small pool and export-bucket client from
the same environment as the worker, lowers its CPU priority and runs the export
(``ops/export.py``), reporting on stdout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from typing import Any

import orjson

from exchange_stream.infra import logs
from exchange_stream.infra.config import Settings
from exchange_stream.infra.db import create_pool
from exchange_stream.infra.export_store import open_export_store
from exchange_stream.ops import export_process
from exchange_stream.ops.export import ExportResources, execute_claim
from exchange_stream.ops.framework import Fenced, OperationFailed

log = logging.getLogger(__name__)

# A page being read while the one before is built, the run's checks, its checkpoint.
POOL_SIZE = 4


async def _run(settings: Settings, claim: dict[str, Any], out: export_process.Reporter) -> None:
    pool = await create_pool(settings, max_size=POOL_SIZE, batch_work=True)
    try:
        async with open_export_store(settings) as store:
            res = ExportResources(
                settings,
                pool,
                store,
                uuid.UUID(claim["job_run_id"]),
                int(claim["execution"]),
                claim.get("correlation_id"),
            )
            try:
                result = await execute_claim(res, claim, out.progress)
            except Fenced:
                out.send({"fenced": True})
            except OperationFailed as exc:
                out.send({"failed": str(exc), "summary": exc.summary})
            except Exception as exc:
                # Type and frames reach the log (logs.py never writes exception texts).
                fields = {"export_id": claim["export_id"], "error_type": type(exc).__name__}
                log.error("export failed", exc_info=True, extra={"fields": fields})
                out.send({"error": type(exc).__name__})
            else:
                out.send({"result": result})
    finally:
        await pool.close()


def main() -> int:
    export_process.die_with_parent()
    # The protocol keeps stdout to itself; anything else written there goes to stderr.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    settings = Settings.from_env()
    logs.setup(settings.log_level)
    export_process.lower_priority(settings.export_nice)
    line = sys.stdin.buffer.readline()
    if not line:
        return 1
    claim = orjson.loads(line)
    export_process.watch_stdin(sys.stdin.buffer)
    loop_factory = None
    if settings.event_loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_run(settings, claim, export_process.Reporter(protocol)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
