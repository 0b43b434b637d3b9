"""Recipients and their key versions: add, list, rotate a key, retire a key, revoke; the
JWKS a recipient signs its SMART Backend Services assertions with (add ``--jwks``, set-jwks);
and its grants (grant, grants, revoke-grant: what it may read, ``read/grants.py``).

Every change is one transaction that also writes its ``audit_log`` row. Keys are derived from
``RECIPIENT_TOKEN_SECRET`` per (recipient, version) (``core/recipient_token.py`` says why), so a
rotation stores no key: it adds the next version, which new tokens use while older active
versions keep resolving until they are retired. Workers see a change within their recipient
cache's lifetime (``RECIPIENT_CACHE_TTL_S``).
"""

from __future__ import annotations

from datetime import date
from typing import Any

from exchange_stream.core.jwks import JwksInvalid, validate_jwks
from exchange_stream.infra.sql import q
from exchange_stream.ops.framework import (
    Operation,
    OperationFailed,
    OpsContext,
    ParamsInvalid,
    ProgressFn,
)


async def add(ctx: OpsContext, params: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    recipient = params["recipient"]
    jwks = validate_jwks(params["jwks"]) if "jwks" in params else None
    async with ctx.pool.acquire() as conn, conn.transaction():
        created = await conn.fetchval(q("recipients_add"), recipient, ctx.actor, ctx.correlation_id)
        if created is None:
            raise OperationFailed("recipient already registered", {"recipient": recipient})
        if jwks is not None:
            await _set_jwks(ctx, conn, recipient, jwks)
    result: dict[str, Any] = {"recipient": recipient, "status": "active", "version": 1}
    if jwks is not None:
        result["jwks_keys"] = len(jwks["keys"])
    return result


async def set_jwks(ctx: OpsContext, params: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    recipient = params["recipient"]
    jwks = validate_jwks(params["jwks"])
    async with ctx.pool.acquire() as conn, conn.transaction():
        await _active(conn, recipient)
        await _set_jwks(ctx, conn, recipient, jwks)
    return {"recipient": recipient, "jwks_keys": len(jwks["keys"])}


async def _set_jwks(ctx: OpsContext, conn: Any, recipient: str, jwks: dict[str, Any]) -> None:
    details = {"keys": len(jwks["keys"]), "kids": [k["kid"] for k in jwks["keys"] if "kid" in k]}
    await conn.fetchval(
        q("recipients_set_jwks"), recipient, jwks, ctx.actor, ctx.correlation_id, details
    )


def _check_jwks(params: dict[str, Any]) -> None:
    """A JWKS must hold public RSA (2048 bits or more) or EC P-384 keys only."""
    if "jwks" in params:
        try:
            validate_jwks(params["jwks"])
        except JwksInvalid as exc:
            raise ParamsInvalid(f"invalid field: jwks: {exc}") from None


async def list_all(ctx: OpsContext, params: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    rows = await ctx.pool.fetch(q("recipients_list"))
    recipients = []
    for r in rows:
        active = [k["version"] for k in r["keys"] if k["status"] == "active"]
        recipients.append(
            {
                "recipient": r["recipient_id"],
                "status": r["status"],
                "current_version": max(active) if active and r["status"] == "active" else None,
                "resolvable_versions": active if r["status"] == "active" else [],
                "keys": r["keys"],
                "jwks_keys": r["jwks_keys"],
                "created_at": r["created_at"].isoformat(),
                "revoked_at": r["revoked_at"].isoformat() if r["revoked_at"] else None,
            }
        )
    return {"count": len(recipients), "recipients": recipients}


async def rotate_key(
    ctx: OpsContext, params: dict[str, Any], progress: ProgressFn
) -> dict[str, Any]:
    recipient = params["recipient"]
    async with ctx.pool.acquire() as conn, conn.transaction():
        await _active(conn, recipient)
        version = await conn.fetchval(
            q("recipients_rotate_key"), recipient, ctx.actor, ctx.correlation_id
        )
        versions = await conn.fetch(q("recipients_key_versions"), recipient)
    return {
        "recipient": recipient,
        "current_version": version,
        "resolvable_versions": [v["version"] for v in versions if v["status"] == "active"],
    }


async def retire_key(
    ctx: OpsContext, params: dict[str, Any], progress: ProgressFn
) -> dict[str, Any]:
    recipient, version = params["recipient"], params["version"]
    async with ctx.pool.acquire() as conn, conn.transaction():
        await _active(conn, recipient)
        keys = {
            r["version"]: r["status"]
            for r in await conn.fetch(q("recipients_key_versions"), recipient)
        }
        if keys.get(version) != "active":
            raise OperationFailed(
                "no such active key version", {"recipient": recipient, "version": version}
            )
        if version == max(v for v, s in keys.items() if s == "active"):
            # New tokens are issued under the newest version: retiring it would leave none.
            raise OperationFailed(
                "the newest key version cannot be retired: rotate first",
                {"recipient": recipient, "version": version},
            )
        await conn.fetchval(
            q("recipients_retire_key"), recipient, version, ctx.actor, ctx.correlation_id
        )
    keys[version] = "retired"
    return {
        "recipient": recipient,
        "retired_version": version,
        "resolvable_versions": sorted(v for v, s in keys.items() if s == "active"),
    }


async def revoke(ctx: OpsContext, params: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    recipient = params["recipient"]
    async with ctx.pool.acquire() as conn, conn.transaction():
        await _active(conn, recipient)
        await conn.fetchval(q("recipients_revoke"), recipient, ctx.actor, ctx.correlation_id)
    return {"recipient": recipient, "status": "revoked"}


async def _active(conn: Any, recipient: str) -> None:
    """Lock the recipient row for the change; refuse an unknown or revoked recipient."""
    status = await conn.fetchval(q("recipients_lock"), recipient)
    if status is None:
        raise OperationFailed("no such recipient", {"recipient": recipient})
    if status != "active":
        raise OperationFailed("recipient is revoked", {"recipient": recipient})


async def grant(ctx: OpsContext, params: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    recipient = params["recipient"]
    sources = None if params["all_sources"] else sorted(set(params["sources"].split(",")))
    kinds = sorted(set(params["kinds"].split(","))) if params.get("kinds") else None
    first, last = _day(params.get("from")), _day(params.get("until"))
    async with ctx.pool.acquire() as conn, conn.transaction():
        await _active(conn, recipient)
        row = await conn.fetchrow(
            q("recipients_grant"),
            recipient,
            sources,
            kinds,
            first,
            last,
            ctx.actor,
            ctx.correlation_id,
        )
    return {"recipient": recipient, "grant": _grant_json(row)}


async def grants(ctx: OpsContext, params: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    recipient = params["recipient"]
    if await ctx.pool.fetchval(q("recipients_lock"), recipient) is None:
        raise OperationFailed("no such recipient", {"recipient": recipient})
    rows = await ctx.pool.fetch(q("recipients_grants"), recipient)
    listed = [_grant_json(r) for r in rows]
    return {
        "recipient": recipient,
        "count": sum(1 for g in listed if g["revoked_at"] is None),
        "grants": listed,
    }


async def revoke_grant(
    ctx: OpsContext, params: dict[str, Any], progress: ProgressFn
) -> dict[str, Any]:
    recipient, grant_id = params["recipient"], params["grant_id"]
    async with ctx.pool.acquire() as conn, conn.transaction():
        if await conn.fetchval(q("recipients_lock"), recipient) is None:
            raise OperationFailed("no such recipient", {"recipient": recipient})
        revoked = await conn.fetchval(
            q("recipients_revoke_grant"), recipient, grant_id, ctx.actor, ctx.correlation_id
        )
    if revoked is None:
        raise OperationFailed(
            "no such grant in force", {"recipient": recipient, "grant_id": grant_id}
        )
    return {"recipient": recipient, "revoked_grant": grant_id}


def _day(value: str | None) -> date | None:
    return date.fromisoformat(value) if value else None


def _grant_json(row: Any) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "grant_id": row["grant_id"],
        "sources": row["sources"],
        "kinds": row["kinds"],
        "from": iso(row["from_date"]),
        "until": iso(row["until_date"]),
        "created_at": iso(row["created_at"]),
        "revoked_at": iso(row.get("revoked_at")) if "revoked_at" in row else None,
    }


def _check_grant(params: dict[str, Any]) -> None:
    """Sources or every source, never both nor neither; real dates, in order."""
    if params["all_sources"] == ("sources" in params):
        raise ParamsInvalid("give exactly one of sources and all_sources")
    try:
        first, last = _day(params.get("from")), _day(params.get("until"))
    except ValueError:
        raise ParamsInvalid("invalid field: from or until is not a real date") from None
    if first and last and last < first:
        raise ParamsInvalid("invalid field: until is before from")


OPERATIONS = (
    Operation(
        "recipients_add", ("recipients", "add"), "register a recipient", add, check=_check_jwks
    ),
    Operation(
        "recipients_set_jwks",
        ("recipients", "set-jwks"),
        "register or replace the public keys of a recipient's SMART Backend Services client",
        set_jwks,
        check=_check_jwks,
    ),
    Operation(
        "recipients_list", ("recipients", "list"), "recipients and their key versions", list_all
    ),
    Operation(
        "recipients_rotate_key",
        ("recipients", "rotate-key"),
        "add a recipient's next key version",
        rotate_key,
    ),
    Operation(
        "recipients_retire_key",
        ("recipients", "retire-key"),
        "retire one key version of a recipient",
        retire_key,
    ),
    Operation("recipients_revoke", ("recipients", "revoke"), "revoke a recipient", revoke),
    Operation(
        "recipients_grant",
        ("recipients", "grant"),
        "grant a recipient the records of some sources, kinds and days",
        grant,
        check=_check_grant,
    ),
    Operation("recipients_grants", ("recipients", "grants"), "a recipient's grants", grants),
    Operation(
        "recipients_revoke_grant",
        ("recipients", "revoke-grant"),
        "revoke one of a recipient's grants",
        revoke_grant,
    ),
)
