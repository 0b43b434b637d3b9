"""The scopes this service knows, and which credential holds which: names only, no I/O.

Scopes are space separated in a credential's ``scope`` claim, as OAuth writes them. docs/API.md
("Credentials, roles and scopes") has the table of who holds what and which route needs which.
The worker (``web/auth.py``) checks them; the CLI (``recipients dev-token``) issues them.
"""

from __future__ import annotations

from collections.abc import Iterable

INGEST = "ingest"
TOKENIZE = "tokenize"
READ_RECORDS = "records:read"
EXPORT = "export"
OPTOUTS_WRITE = "optouts:write"
OPS_READ = "ops:read"
OPS_WRITE = "ops:write"
# Every scope, in the order of docs/API.md's table (so messages list them as the docs do).
ORDER = (INGEST, TOKENIZE, READ_RECORDS, EXPORT, OPTOUTS_WRITE, OPS_READ, OPS_WRITE)
SCOPES = frozenset(ORDER)
# What a partner JWT without a ``scope`` claim holds: what every partner JWT could do before
# scopes existed.
PARTNER_DEFAULT_SCOPES = frozenset({INGEST, TOKENIZE})
# What a recipient's access token may hold (POST /auth/token, recipients dev-token).
RECIPIENT_SCOPES = frozenset({READ_RECORDS, EXPORT})
# What an access token's SMART scopes (``system/...``) stand for, limited to their kinds.
SMART_SCOPE_GRANTS = frozenset({READ_RECORDS, EXPORT})


def in_order(scopes: Iterable[str]) -> list[str]:
    """The known scopes among ``scopes``, in the order of docs/API.md's table."""
    wanted = set(scopes)
    return [s for s in ORDER if s in wanted]
