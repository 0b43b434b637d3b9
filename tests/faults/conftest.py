"""Fixtures of the fault matrix, and its long variants kept out of the default run.

A test marked ``slow`` here runs only with ``FAULTS_LONG=1`` in the environment or when ``-m``
names the marker (``-m slow``); ``scripts/reliability_report.py --long`` sets the variable.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.faults.common import FaultRun, Variant

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("FAULTS_LONG") == "1" or "slow" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="long fault variant: set FAULTS_LONG=1 or use -m slow")
    for item in items:
        if item.get_closest_marker("slow") and HERE in item.path.parents:
            item.add_marker(skip)


@pytest.fixture
async def fault_run(
    db: asyncpg.Pool, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[FaultRun]:
    """This test's own source, topics and consumer group; its workers and load are stopped and
    its topics deleted at the end whatever happens. The test's ``variant`` parameter sizes the
    run."""
    fault = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    variant: Variant = request.getfixturevalue("variant")
    doc = request.node.function.__doc__ or request.node.originalname
    run = FaultRun(fault, request.node.originalname, doc.strip().splitlines()[0], variant, tmp_path)
    await run.create_topics()
    try:
        yield run
    finally:
        await run.close(db)
