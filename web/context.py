"""What the views are given: settings, the tokenizer, the normalizer's gate, recipients' tokens
and the resources."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from aiohttp import web

from exchange_stream.core.identity import Tokenizer
from exchange_stream.core.match_tokens import MatchKeys
from exchange_stream.infra.config import Settings
from exchange_stream.infra.export_store import ExportStore
from exchange_stream.infra.runtime import Runtime
from exchange_stream.infra.storage import RawStore
from exchange_stream.pipeline.backlog import Backlog
from exchange_stream.pipeline.gate import DependencyGate
from exchange_stream.read.audit import ReadAudit
from exchange_stream.read.tokens import RecipientTokenService

# aiohttp refuses larger bodies with 413 before a view reads them.
MAX_BODY_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class WebContext:
    """Everything a view uses; the pool and the store exist once the worker has started."""

    settings: Settings
    tokenizer: Tokenizer
    gate: DependencyGate
    resources: Runtime
    tokens: RecipientTokenService
    audit: ReadAudit
    match_keys: MatchKeys
    backlog: Backlog | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        return self.resources.pool

    @property
    def read_pool(self) -> asyncpg.Pool:
        """The read API's pool, apart from the one ingest uses."""
        return self.resources.read_pool

    @property
    def store(self) -> RawStore:
        return self.resources.store

    @property
    def export_store(self) -> ExportStore:
        """The bulk exports' bucket, which downloads stream from."""
        return self.resources.export_store


CONTEXT = web.AppKey("context", WebContext)
