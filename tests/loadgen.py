"""Steady ingest load from a second process, as partners send it, on loopback only.

``python -m tests.loadgen --url http://127.0.0.1:8080 --rate 25 --seconds 20 --source S
--out load.jsonl`` sends ``rate * seconds`` v1/v2 bodies (every third one v1) at a fixed rate with
a few concurrent clients. A request that fails (connection refused, timeout, 503, any 5xx) is
retried with the same ``Idempotency-Key`` and body after a short backoff (``Retry-After`` when the
server sends one, capped), against the next ``--url`` when several are given, until it gets its
202 or the run's hard deadline (``seconds + grace``) passes. The run is bounded in count and time
and stops by itself.

The output is JSON lines, flushed as they happen so a test can follow the run:
``{"type": "accepted", "record_id", "key", "accepted_at", "version", "attempts", "url"}`` per 202,
then one ``{"type": "summary", ...}`` with the request, status and error counts, the observed
``Retry-After`` values of 503s (and how many 503s had none), the first and last time each kind of
failure was seen, and the keys that never got a 202 (``abandoned``).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import itertools
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from tests.payloads import new_key, v1_body, v2_body
from tests.support import post_json

# Statuses after which a partner sends the same request again.
RETRYABLE = frozenset({500, 502, 503, 504})


def is_loopback(url: str) -> bool:
    """True when ``url`` is http(s) to a loopback address (or ``localhost``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


@dataclass
class Tally:
    """What the run saw, written as the summary line."""

    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    retry_after: Counter = field(default_factory=Counter)
    unavailable_without_retry_after: int = 0
    failure_window: dict[str, list[float]] = field(default_factory=dict)
    accepted: int = 0
    abandoned: list[dict[str, Any]] = field(default_factory=list)

    def failure(self, kind: str) -> None:
        now = time.time()
        window = self.failure_window.setdefault(kind, [now, now])
        window[1] = now


@dataclass(frozen=True)
class Plan:
    """The run's parameters."""

    urls: list[str]
    rate: float
    seconds: float
    source: str
    clients: int
    grace_s: float
    timeout_s: float
    max_backoff_s: float

    @property
    def total(self) -> int:
        return max(1, round(self.rate * self.seconds))


class Writer:
    """JSON lines to a file, one flushed line per event."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh

    def line(self, doc: dict[str, Any]) -> None:
        self.fh.write(orjson.dumps(doc) + b"\n")
        self.fh.flush()


def _body(plan: Plan, n: int) -> tuple[str, dict[str, Any]]:
    if n % 3 == 2:
        return "1", v1_body(source=plan.source)
    return "2", v2_body(source=plan.source)


async def _send_until_accepted(
    http: aiohttp.ClientSession,
    plan: Plan,
    n: int,
    client: int,
    deadline: float,
    tally: Tally,
    out: Writer,
) -> None:
    """One partner request: the same key and body until a 202, a final 4xx or the deadline."""
    version, body = _body(plan, n)
    key = new_key()
    urls = itertools.islice(itertools.cycle(plan.urls), client % len(plan.urls), None)
    backoff = 0.1
    attempts = 0
    last = "none"
    for url in urls:
        if time.monotonic() >= deadline:
            break
        attempts += 1
        tally.requests += 1
        delay = backoff
        try:
            status, resp, headers = await post_json(http, f"{url}/v{version}/ingest", body, key=key)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            last = type(exc).__name__
            tally.errors[last] += 1
            tally.failure(last)
        else:
            tally.statuses[str(status)] += 1
            if status == 202:
                tally.accepted += 1
                out.line(
                    {
                        "type": "accepted",
                        "record_id": resp["record_id"],
                        "key": key,
                        "accepted_at": time.time(),
                        "version": version,
                        "attempts": attempts,
                        "url": url,
                    }
                )
                return
            last = str(status)
            tally.failure(last)
            if status not in RETRYABLE:
                break
            retry_after = headers.get("Retry-After")
            if status == 503 and retry_after is None:
                tally.unavailable_without_retry_after += 1
            elif status == 503:
                tally.retry_after[retry_after] += 1
            if retry_after is not None and retry_after.isdigit():
                delay = max(delay, float(retry_after))
        await asyncio.sleep(min(delay, plan.max_backoff_s, max(0.0, deadline - time.monotonic())))
        backoff = min(backoff * 2, 1.0)
    tally.abandoned.append({"key": key, "last": last, "attempts": attempts})


async def run(plan: Plan, out: Writer) -> Tally:
    """Send the plan's records at its rate; return the tally once every client has finished."""
    tally = Tally()
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    started = time.monotonic()
    deadline = started + plan.seconds + plan.grace_s

    async def schedule() -> None:
        for n in range(plan.total):
            await asyncio.sleep(max(0.0, started + n / plan.rate - time.monotonic()))
            queue.put_nowait(n)
        for _ in range(plan.clients):
            queue.put_nowait(None)

    timeout = aiohttp.ClientTimeout(total=plan.timeout_s)
    connector = aiohttp.TCPConnector(limit=plan.clients * 2)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:

        async def client(i: int) -> None:
            while (n := await queue.get()) is not None:
                if time.monotonic() >= deadline:
                    tally.abandoned.append({"key": None, "last": "not sent", "attempts": 0})
                    continue
                await _send_until_accepted(http, plan, n, i, deadline, tally, out)

        await asyncio.gather(schedule(), *(client(i) for i in range(plan.clients)))
    return tally


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.loadgen", description=__doc__)
    p.add_argument("--url", action="append", required=True, help="worker base URL; repeatable")
    p.add_argument("--rate", type=float, default=25.0, help="records per second")
    p.add_argument("--seconds", type=float, default=20.0, help="how long new records are sent")
    p.add_argument("--source", required=True)
    p.add_argument("--out", type=Path, required=True, help="JSON lines output")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--grace-s", type=float, default=60.0, help="retrying time after the last send")
    p.add_argument("--timeout-s", type=float, default=5.0, help="per request")
    p.add_argument("--max-backoff-s", type=float, default=2.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not all(is_loopback(u) for u in args.url):
        print("loadgen: only loopback targets are allowed", file=sys.stderr)
        return 2
    if args.rate <= 0 or args.seconds <= 0 or args.clients < 1:
        print("loadgen: --rate, --seconds and --clients must be positive", file=sys.stderr)
        return 2
    plan = Plan(
        urls=[u.rstrip("/") for u in args.url],
        rate=args.rate,
        seconds=args.seconds,
        source=args.source,
        clients=args.clients,
        grace_s=args.grace_s,
        timeout_s=args.timeout_s,
        max_backoff_s=args.max_backoff_s,
    )
    with args.out.open("wb") as fh:
        out = Writer(fh)
        started_at = time.time()
        out.line({"type": "start", "at": started_at, "planned": plan.total, **vars(plan)})
        tally = asyncio.run(run(plan, out))
        out.line(
            {
                "type": "summary",
                "started_at": started_at,
                "ended_at": time.time(),
                "planned": plan.total,
                "rate": plan.rate,
                "seconds": plan.seconds,
                "clients": plan.clients,
                "requests": tally.requests,
                "accepted": tally.accepted,
                "statuses": dict(tally.statuses),
                "errors": dict(tally.errors),
                "retry_after": dict(tally.retry_after),
                "unavailable_without_retry_after": tally.unavailable_without_retry_after,
                "failure_window": tally.failure_window,
                "abandoned": tally.abandoned,
            }
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
