"""``exchange-stream topics``: the stack's Kafka topics, and raising their partition counts.

``exchange-stream topics [--topic NAME ...] [--output text|json]`` shows every topic the stack
uses (``Settings.all_topics()``, named by the ``TOPIC_*`` settings) with its partitions,
replication factor and whether it exists. ``--raise-partitions N`` raises all of them, or the
``--topic`` ones, to N partitions through the Kafka admin API (no ``kafka-topics.sh`` needed):

- a topic that already has N partitions is left alone: the command can be run again, and
  "nothing to do" exits 0;
- a topic with more than N is refused (Kafka cannot remove partitions), exit 2, and nothing is
  changed: every topic is checked before any is raised;
- a name that is not one of the stack's topics is refused, exit 2. That includes Faust's own
  topics (``<APP_ID>-<table>-changelog``, ``<APP_ID>-__assignor-__leader``): a table's changelog
  must keep its source topic's partition count (Faust stops with ``PartitionsMismatch``
  otherwise), so it is never raised on its own. The worker declares no table today; one added
  later needs its changelog raised with its source topic, in one step, by other means;
- a topic of the stack that does not exist yet is not created here, exit 1
  (``exchange-stream create-topics`` makes it).

Exit codes are those of ``cli/operations.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, TextIO

import orjson
from aiokafka.errors import KafkaError

from exchange_stream.cli.operations import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_output_option
from exchange_stream.infra import logs
from exchange_stream.infra.config import Settings
from exchange_stream.infra.topics import TopicState, describe_topics, raise_partitions

ORDERING_WARNING = """\
warning: what raising the partitions of a keyed topic means
  Kafka sends a keyed message to partition hash(key) mod partitions: after the raise, new
  messages for a key (a record id on the ingested and DLQ topics, a command id on the control
  topics) may land on another partition than that key's earlier ones. Order per key then holds
  among the messages sent after the change, not across it: a record's event sent before and one
  sent after may be processed in either order. The normalizer is idempotent per record id and a
  command id is acted on once, so nothing is doubled; messages already written stay where they
  are. Workers see the new partitions at their next metadata refresh (about 10 s), rebalance and
  read them from their start; the outbox relay sends to them after its producer's refresh (at
  most 5 minutes). Partitions can never be removed. Set TOPIC_PARTITIONS to the new count too,
  so topics created later match."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``topics`` and its options."""
    p = sub.add_parser(
        "topics",
        help="the stack's Kafka topics: partitions, replication, existence; raise partitions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--raise-partitions",
        type=_positive,
        metavar="N",
        help="raise the topics to N partitions (never lowers; a topic at N is left alone)",
    )
    p.add_argument(
        "--topic",
        action="append",
        metavar="NAME",
        help="only this topic (repeat for several; default: every topic of the stack)",
    )
    add_output_option(p, "text (default): a table; json: one JSON object on stdout")


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("a whole number of partitions") from None
    if n < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return n


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Show the topics, or raise their partitions; see the module docstring."""
    logs.setup("WARNING")
    known = settings.all_topics()
    chosen: list[str] = list(dict.fromkeys(args.topic or known))
    unknown = [t for t in chosen if t not in known]
    if unknown:
        _err(
            f"not a topic of the stack: {', '.join(unknown)} (its topics: {', '.join(known)}; "
            "Faust's changelog and internal topics are never raised here)"
        )
        return EXIT_USAGE
    try:
        states = asyncio.run(describe_topics(settings))
    except KafkaError as exc:
        _err(f"cannot reach Kafka at {settings.kafka_brokers} ({type(exc).__name__})")
        return EXIT_FAILED
    selected = [s for s in states if s.name in chosen]
    if args.raise_partitions is None:
        _print(
            args.output, {"topics": _rows(selected), "topic_partitions": settings.topic_partitions}
        )
        return EXIT_OK
    return _raise(settings, args, selected, args.raise_partitions)


def _raise(settings: Settings, args: argparse.Namespace, selected: list[TopicState], n: int) -> int:
    higher = [s for s in selected if s.partitions is not None and s.partitions > n]
    if higher:
        listed = ", ".join(f"{s.name} has {s.partitions}" for s in higher)
        _err(f"refused: Kafka cannot lower partitions ({listed}; asked {n}); nothing changed")
        return EXIT_USAGE
    missing = [s.name for s in selected if not s.exists]
    if missing:
        _err(f"topic does not exist: {', '.join(missing)} (exchange-stream create-topics makes it)")
        return EXIT_FAILED
    to_raise = {s.name: n for s in selected if s.partitions is not None and s.partitions < n}
    if to_raise:
        print(ORDERING_WARNING, file=sys.stderr)
        try:
            asyncio.run(raise_partitions(settings, to_raise))
            after = {s.name: s for s in asyncio.run(describe_topics(settings))}
        except KafkaError as exc:
            _err(
                f"raising partitions failed ({type(exc).__name__}); exchange-stream topics shows "
                "where each topic stands, and the same command again is safe"
            )
            return EXIT_FAILED
    else:
        after = {s.name: s for s in selected}
    report: dict[str, Any] = {
        "partitions": n,
        "raised": [
            {"topic": s.name, "from": s.partitions, "to": after[s.name].partitions}
            for s in selected
            if s.name in to_raise
        ],
        "unchanged": [s.name for s in selected if s.name not in to_raise],
        "topics": _rows([after[s.name] for s in selected]),
    }
    if args.output == "json":
        _print("json", report)
    else:
        out = sys.stdout
        if not to_raise:
            out.write(f"nothing to do: {', '.join(report['unchanged'])} already at {n}\n")
        for r in report["raised"]:
            out.write(f"raised {r['topic']}: {r['from']} -> {r['to']} partitions\n")
        _table(out, report["topics"])
    return EXIT_OK


def _rows(states: list[TopicState]) -> list[dict[str, Any]]:
    return [
        {
            "topic": s.name,
            "role": s.role,
            "exists": s.exists,
            "partitions": s.partitions,
            "replication_factor": s.replication_factor,
            "consumed_by": s.consumed_by,
        }
        for s in states
    ]


def _print(output: str, doc: dict[str, Any]) -> None:
    if output == "json":
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
        return
    _table(sys.stdout, doc["topics"])
    missing = [r["topic"] for r in doc["topics"] if not r["exists"]]
    if missing:
        sys.stdout.write(f"missing: {', '.join(missing)} (exchange-stream create-topics)\n")
    sys.stdout.write(
        f"topics are created with TOPIC_PARTITIONS={doc['topic_partitions']} partitions\n"
    )


def _table(out: TextIO, rows: list[dict[str, Any]]) -> None:
    cells = [["topic", "role", "partitions", "replication", "exists", "consumed by"]]
    for r in rows:
        cells.append(
            [
                r["topic"],
                r["role"],
                "-" if r["partitions"] is None else str(r["partitions"]),
                "-" if r["replication_factor"] is None else str(r["replication_factor"]),
                "yes" if r["exists"] else "NO",
                r["consumed_by"],
            ]
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for row in cells:
        padded = [
            c.rjust(w) if i in (2, 3) else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.write("  ".join(padded).rstrip() + "\n")


def _err(message: str) -> None:
    print(f"exchange-stream topics: {message}", file=sys.stderr)
