"""``exchange-stream <command>``: the worker and the operator commands."""

from __future__ import annotations

import argparse
import asyncio
import sys

from exchange_stream import logs, ops_cli
from exchange_stream.config import ConfigError, Settings
from exchange_stream.jobs import cli as jobs_cli


def _cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from exchange_stream.app import create_app

    app = create_app(settings)
    worker = app.Worker(
        loglevel=settings.log_level,
        logging_config=logs.logging_config(settings.log_level),
    )
    worker.execute_from_commandline()
    return 0


def _cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from exchange_stream.migrate import migrate

    logs.setup(settings.log_level)
    applied = asyncio.run(migrate(settings.dsn))
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    return 0


def _cmd_create_topics(settings: Settings, args: argparse.Namespace) -> int:
    from exchange_stream.topics import ensure_topics

    logs.setup(settings.log_level)
    created = asyncio.run(ensure_topics(settings))
    print(f"topics: {len(settings.all_topics())} present, {len(created)} created")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exchange-stream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="run the Faust worker (web server, relay, agents)")
    sub.add_parser("migrate", help="apply pending SQL migrations, once each")
    sub.add_parser("create-topics", help="create the topics of SPEC §5 that are missing")
    ops_cli.add_parsers(sub)
    jobs_cli.add_parser(sub)
    return parser


def _cmd_operation(settings: Settings, args: argparse.Namespace) -> int:
    logs.setup("WARNING")
    return ops_cli.run(settings, args)


def _cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    logs.setup("WARNING")
    return jobs_cli.run(settings, args)


_COMMANDS = {
    "worker": _cmd_worker,
    "migrate": _cmd_migrate,
    "create-topics": _cmd_create_topics,
    "replay": _cmd_operation,
    "reconcile": _cmd_operation,
    "dlq": _cmd_operation,
    "jobs": _cmd_jobs,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"exchange-stream: configuration error: {exc}", file=sys.stderr)
        return 2
    return _COMMANDS[args.command](settings, args)


if __name__ == "__main__":
    sys.exit(main())
