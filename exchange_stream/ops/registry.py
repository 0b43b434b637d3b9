"""Every operation, in one table: what the control plane runs and the CLI offers."""

from __future__ import annotations

from typing import Any

from exchange_stream.ops import (
    data_quality,
    export,
    link_persons,
    optouts,
    patient_index,
    recipients,
    reconcile,
    redrive,
    replay,
)
from exchange_stream.ops.framework import Operation, ParamsInvalid

OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        replay.OPERATION,
        reconcile.OPERATION,
        redrive.OPERATION,
        patient_index.OPERATION,
        data_quality.OPERATION,
        link_persons.OPERATION,
        export.OPERATION,
        *recipients.OPERATIONS,
        *optouts.OPERATIONS,
    )
}
JOBS: dict[str, Operation] = {name: op for name, op in OPERATIONS.items() if op.job}

# The control topic's name for "run this job": {"command": "run_job", "params": {"job", "params"}}.
RUN_JOB = "run_job"


def resolve(command: str, params: dict[str, Any]) -> tuple[Operation, dict[str, Any]]:
    """The operation a command names and its effective parameters; ``ParamsInvalid`` names
    what is wrong. ``run_job`` names a job and carries that job's own parameters."""
    if command == RUN_JOB:
        job = params.get("job")
        op = JOBS.get(job) if isinstance(job, str) else None
        if op is None:
            raise ParamsInvalid(f"unknown job (known: {', '.join(sorted(JOBS))})")
        given = params.get("params") or {}
        if not isinstance(given, dict):
            raise ParamsInvalid("invalid field: params.params")
        return op, op.params(given)
    op = OPERATIONS.get(command)
    if op is None:
        raise ParamsInvalid("invalid field: command")
    return op, op.params(params)
