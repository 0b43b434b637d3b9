"""Recipient token and scoped id benchmark: issue and resolve per second on one core.

    .venv/bin/python bench/recipient_tokens.py [--tokens 1000] [--rounds 100] [--repeats 5]

Pure CPU, no services. The process pins itself to one core, builds --tokens distinct master
tokens, warms the key cache, then times each row --repeats times over --rounds passes of the
tokens (time.perf_counter) and reports the median and best rate. Batched rows go through
issue_many/resolve_many in pages of 500, the read path's largest page. The refused rows show
that a refusal costs about what a success does (see the module's note on timing), and the last
row is the one-off cost of deriving a key on a cache miss (HKDF and AESSIV construction).
The scoped id rows (core/scoped_ids.py) time a recipient's record ids, item ids and cursors, one
at a time and by pages of 500; "us/op" is per id, so a page costs 500 times it. The header names
the CPU and a calibration figure (the time of a fixed pure-Python loop, the command below), so
figures from another machine can be scaled:

    python3 -c "import time;t=time.time();[0 for _ in range(10_000_000)];print(time.time()-t)"
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography import __version__ as cryptography_version
from cryptography.hazmat.backends.openssl.backend import backend
from harness import calibration_s, cpu_model

from exchange_stream.core.recipient_token import RecipientTokens
from exchange_stream.core.scoped_ids import ScopedIds

PAGE = 500
RECIPIENT = "acme-research"
# The refusals that cost a decryption, as a good token does (the timing note of the module).
REFUSED_WELL_FORMED = ("resolve, retired version -> None", "resolve, altered token -> None")


def rates(run: Callable[[], int], repeats: int) -> tuple[float, float]:
    """Median and best operations per second of ``run`` (which returns how many it did)."""
    measured = []
    for _ in range(repeats):
        started = time.perf_counter()
        ops = run()
        measured.append(ops / (time.perf_counter() - started))
    return statistics.median(measured), max(measured)


def scoped_id_rows(n: int, rounds: int) -> list[tuple[str, Callable[[], int]]]:
    ids = ScopedIds(b"bench-recipient-token-secret-0123456789")
    record_uuids = [uuid.UUID(bytes=hashlib.md5(i.to_bytes(8, "big")).digest()) for i in range(n)]
    item_values = [f"enc-{i:08d}" for i in range(n)]
    uuid_pages = [record_uuids[i : i + PAGE] for i in range(0, n, PAGE)]
    item_pages = [item_values[i : i + PAGE] for i in range(0, n, PAGE)]
    scoped_records = ids.record_ids(record_uuids, RECIPIENT, 2)
    scoped_pages = [scoped_records[i : i + PAGE] for i in range(0, n, PAGE)]
    scoped_items = ids.item_ids("encounter", item_values, RECIPIENT, 2)
    cursor = ids.seal_cursor(b"\x00" * 24, RECIPIENT, 2)
    live = {1, 2}
    if ids.open_record_ids(scoped_records, RECIPIENT, live) != record_uuids:
        raise SystemExit("open_record_ids does not return the record ids")

    def per_page(run_page: Callable[[list], object], pages: list[list]) -> Callable[[], int]:
        def run() -> int:
            for _ in range(rounds):
                for page in pages:
                    run_page(page)
            return rounds * n

        return run

    def one_by_one(run_one: Callable[[object], object], values: list) -> Callable[[], int]:
        def run() -> int:
            for _ in range(rounds):
                for value in values:
                    run_one(value)
            return rounds * n

        return run

    return [
        (
            "record id, one per call",
            one_by_one(lambda u: ids.record_ids([u], RECIPIENT, 2), record_uuids),
        ),
        (
            f"record ids, pages of {PAGE}",
            per_page(lambda p: ids.record_ids(p, RECIPIENT, 2), uuid_pages),
        ),
        (
            f"open record ids, pages of {PAGE}",
            per_page(lambda p: ids.open_record_ids(p, RECIPIENT, live), scoped_pages),
        ),
        (
            "item id, one per call",
            one_by_one(lambda v: ids.item_ids("encounter", [v], RECIPIENT, 2), item_values),
        ),
        (
            f"item ids, pages of {PAGE}",
            per_page(lambda p: ids.item_ids("encounter", p, RECIPIENT, 2), item_pages),
        ),
        (
            "open item id",
            one_by_one(lambda t: ids.open_item_id(t, "encounter", RECIPIENT, live), scoped_items),
        ),
        (
            "seal cursor (24 bytes)",
            one_by_one(lambda _: ids.seal_cursor(b"\x00" * 24, RECIPIENT, 2), item_values),
        ),
        (
            "open cursor",
            one_by_one(lambda _: ids.open_cursor(cursor, RECIPIENT, live), item_values),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"

    tokens = RecipientTokens(b"bench-recipient-token-secret-0123456789")
    masters = [hashlib.sha256(i.to_bytes(8, "big")).hexdigest() for i in range(args.tokens)]
    issued = tokens.issue_many(masters, RECIPIENT, 2)
    pages = [masters[i : i + PAGE] for i in range(0, len(masters), PAGE)]
    token_pages = [issued[i : i + PAGE] for i in range(0, len(issued), PAGE)]
    live, retired_only = {1, 2}, {3}
    forged = [t[:-2] + ("AA" if t[-2:] != "AA" else "BB") for t in issued]
    malformed = [t.replace("rt1.", "rt2.") for t in issued]
    n, rounds = len(masters), args.rounds
    # A benchmark of a wrong implementation is worthless; checked explicitly (python -O
    # strips asserts).
    if tokens.resolve_many(issued, RECIPIENT, live) != masters:
        raise SystemExit("resolve_many does not return the issued tokens' masters")

    def issue() -> int:
        one = tokens.issue
        for _ in range(rounds):
            for master in masters:
                one(master, RECIPIENT, 2)
        return rounds * n

    def issue_many() -> int:
        for _ in range(rounds):
            for page in pages:
                tokens.issue_many(page, RECIPIENT, 2)
        return rounds * n

    def resolve_each(batch: list[str], versions: set[int]) -> Callable[[], int]:
        def run() -> int:
            one = tokens.resolve
            for _ in range(rounds):
                for token in batch:
                    one(token, RECIPIENT, versions)
            return rounds * len(batch)

        return run

    def resolve_many() -> int:
        for _ in range(rounds):
            for page in token_pages:
                tokens.resolve_many(page, RECIPIENT, live)
        return rounds * n

    def derive_cold() -> int:
        # Distinct recipients, so each call misses the cache and derives a key.
        fresh = RecipientTokens(b"bench-recipient-token-secret-0123456789", cache_size=n)
        for i in range(n):
            fresh.issue(masters[i], f"r{i}", 1)
        return n

    rows = [
        ("issue", issue),
        (f"issue_many (pages of {PAGE})", issue_many),
        ("resolve", resolve_each(issued, live)),
        (f"resolve_many (pages of {PAGE})", resolve_many),
        ("resolve, retired version -> None", resolve_each(issued, retired_only)),
        ("resolve, altered token -> None", resolve_each(forged, live)),
        ("resolve, malformed -> None", resolve_each(malformed, live)),
        ("issue with a cold key (derive)", derive_cold),
        *scoped_id_rows(n, rounds),
    ]
    print(
        f"recipient tokens: {platform.python_implementation()} {platform.python_version()}, "
        f"cryptography {cryptography_version}, {backend.openssl_version_text()}, "
        f"pinned to {cores} core(s); {n} tokens x {rounds} rounds, median of {args.repeats}"
    )
    print(f"cpu: {cpu_model()}; calibration loop (10M list items): {calibration_s():.3f} s")
    print(f"{'what':<36}{'median ops/s':>14}{'best ops/s':>13}{'us/op':>8}")
    medians = {}
    for name, run in rows:
        median, best = rates(run, args.repeats)
        medians[name] = median
        print(f"{name:<36}{median:>14,.0f}{best:>13,.0f}{1e6 / median:>8.2f}")
    good = 1e6 / medians["resolve"]
    refused = {name: 1e6 / medians[name] for name in REFUSED_WELL_FORMED}
    print(
        "a well-formed refused token against a good one: "
        + ", ".join(f"{name.split(', ')[1]} {us / good:.2f}x" for name, us in refused.items())
        + f"; a malformed one ({1e6 / medians['resolve, malformed -> None']:.2f} us) is refused "
        "by its shape, before any decryption"
    )


if __name__ == "__main__":
    main()
