"""``exchange-stream recipients dev-token ID``: a recipient's bearer token, on a local stack only.

It prints the access token that ``POST /auth/token`` (``web/smart.py``) issues to recipient ID
after a SMART Backend Services client assertion, built by the same function
(``issue_access_token`` of ``core/access_token.py``): an EdDSA JWT signed with
``ACCESS_TOKEN_SIGNING_KEY``, with the same header and claims, for the exchange's own scopes
(no ``kinds``: it reads every kind), so a worker checks it exactly as it checks a real one. Only
its lifetime differs: ``--ttl`` seconds (default an hour, at most a day) instead of 5 minutes,
to last a shell session::

    TOKEN=$(exchange-stream recipients dev-token acme --scope records:read)
    curl -s localhost:8080/graphql -H "Authorization: Bearer $TOKEN" -d '{"query": "…"}'

Refusals: any ``ENV`` but ``local`` (exit 2: elsewhere recipients get tokens from
``/auth/token`` only); a scope an access token cannot hold (exit 2, naming the valid ones); a
recipient that is not registered or is revoked in Postgres (exit 1). ``--output json`` prints
``{"token", "expires_at", "scopes"}``. No secret is printed: the token is the only credential
in the output.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime

import asyncpg
import orjson

from exchange_stream.cli.operations import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_output_option
from exchange_stream.core.access_token import issue_access_token, signing_key
from exchange_stream.core.recipient_token import RecipientIdError, validate_recipient_id
from exchange_stream.core.scopes import READ_RECORDS, RECIPIENT_SCOPES, in_order
from exchange_stream.core.timefmt import rfc3339
from exchange_stream.infra.config import Settings
from exchange_stream.infra.sql import q
from exchange_stream.read.tokens import LOCAL_DEV_RECIPIENT

# What ``args.command`` is for this command (main.py dispatches on it).
COMMAND = "recipients dev-token"
# The scopes a recipient's token may hold, as help and refusals list them (docs/API.md's order).
VALID_SCOPES = ", ".join(in_order(RECIPIENT_SCOPES))
DEFAULT_SCOPES = (READ_RECORDS,)
DEFAULT_TTL_S = 3600
MAX_TTL_S = 86400


class Refused(Exception):
    """The token cannot be issued: the message, and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def add_parser(recipients: argparse._SubParsersAction) -> None:
    """``dev-token`` under the ``recipients`` group."""
    p = recipients.add_parser(
        "dev-token",
        help="print a bearer token for a recipient (ENV=local only)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipient", metavar="ID", help="a registered, active recipient")
    p.add_argument(
        "--scope",
        action="append",
        metavar="SCOPE",
        help=f"a scope of the token, repeatable: {VALID_SCOPES} "
        f"(default {' '.join(DEFAULT_SCOPES)})",
    )
    p.add_argument(
        "--ttl",
        type=_ttl,
        default=DEFAULT_TTL_S,
        metavar="SECONDS",
        help=f"lifetime of the token, 1 to {MAX_TTL_S} (default {DEFAULT_TTL_S})",
    )
    add_output_option(p, 'text (default): the token alone; json: {"token", "expires_at", "scopes"}')
    p.set_defaults(command=COMMAND)


def _ttl(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("a whole number of seconds") from None
    if not 1 <= n <= MAX_TTL_S:
        raise argparse.ArgumentTypeError(f"from 1 to {MAX_TTL_S} seconds")
    return n


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Print the token, or say on stderr why not; see the module docstring for exit codes."""
    try:
        scopes = check_request(settings, args.recipient, args.scope)
        asyncio.run(check_recipient(settings, args.recipient))
    except Refused as exc:
        print(f"exchange-stream {COMMAND}: {exc.message}", file=sys.stderr)
        return exc.code
    now = int(time.time())
    token = issue_access_token(
        signing_key(settings.access_token_signing_key),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        recipient=args.recipient,
        scope=" ".join(scopes),
        issued_at=now,
        lifetime_s=args.ttl,
    )
    expires_at = rfc3339(datetime.fromtimestamp(now + args.ttl, UTC))
    if args.output == "json":
        doc = {"token": token, "expires_at": expires_at, "scopes": scopes}
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    else:
        sys.stdout.write(token + "\n")
        if sys.stderr.isatty():
            print(
                f"recipient {args.recipient}, scope {' '.join(scopes)}, valid until {expires_at}",
                file=sys.stderr,
            )
    return EXIT_OK


def check_request(settings: Settings, recipient: str, asked: list[str] | None) -> list[str]:
    """The token's scopes, in the order asked and each once; ``Refused`` outside ENV=local, for
    a malformed recipient id, or for a scope an access token cannot hold."""
    if not settings.is_local:
        raise Refused(
            f"refused with ENV={settings.env}: dev tokens are for a local stack (ENV=local); "
            "elsewhere a recipient gets its tokens from POST /auth/token",
            EXIT_USAGE,
        )
    try:
        validate_recipient_id(recipient)
    except RecipientIdError:
        raise Refused(
            "a recipient id is a slug of 1-32 lowercase letters, digits and inner hyphens",
            EXIT_USAGE,
        ) from None
    scopes = list(dict.fromkeys(asked or DEFAULT_SCOPES))
    unknown = [s for s in scopes if s not in RECIPIENT_SCOPES]
    if unknown:
        raise Refused(
            f"unknown scope {', '.join(unknown)}: a recipient's token may hold {VALID_SCOPES}",
            EXIT_USAGE,
        )
    return scopes


async def check_recipient(settings: Settings, recipient: str) -> None:
    """``Refused`` unless ``recipient`` is registered and active in Postgres."""
    # Never the DSN: it holds the password.
    where = settings.database_url and "DATABASE_URL"
    where = where or f"{settings.postgres_host}:{settings.postgres_port}"
    try:
        conn = await asyncpg.connect(settings.dsn, timeout=10)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise Refused(
            f"cannot reach Postgres at {where} ({type(exc).__name__})", EXIT_FAILED
        ) from None
    try:
        row = await conn.fetchrow(q("recipient_state"), recipient)
    except asyncpg.UndefinedTableError:
        raise Refused(
            "the database has no recipients table: run exchange-stream migrate", EXIT_FAILED
        ) from None
    finally:
        await conn.close()
    if row is None:
        hint = (
            "a local worker registers it when it starts (exchange-stream worker)"
            if recipient == LOCAL_DEV_RECIPIENT
            else f"exchange-stream recipients add {recipient}"
        )
        raise Refused(f"recipient {recipient} is not registered: {hint}", EXIT_FAILED)
    if row["status"] != "active":
        raise Refused(
            f"recipient {recipient} is revoked, and a revoked id stays revoked: register "
            "another id with exchange-stream recipients add ID",
            EXIT_FAILED,
        )
