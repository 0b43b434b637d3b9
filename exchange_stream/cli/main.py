"""``exchange-stream <command>``: the worker, migrations, topics, and every operation.

Exit codes are those of ``cli/operations.py``: 0 succeeded, 1 failed, 2 bad arguments or
configuration, 3 a check found gaps, 4 no result in time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import os
import sys
from collections.abc import Callable

from exchange_stream.cli import control, devtoken, operations, topics
from exchange_stream.infra import logs
from exchange_stream.infra.config import ConfigError, Settings

LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


def _cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from exchange_stream.app import create_app

    overrides = {
        "log_level": args.loglevel,
        "web_port": args.web_port,
        "web_bind": args.web_host,
    }
    settings = dataclasses.replace(
        settings, **{k: v for k, v in overrides.items() if v is not None}
    )
    if settings.event_loop == "uvloop":
        import mode.loop

        # Before the app exists: Faust and mode create their loop through this policy.
        mode.loop.use("uvloop")
    app = create_app(settings)
    worker = app.Worker(
        loglevel=settings.log_level,
        logging_config=logs.logging_config(settings.log_level),
    )
    worker.execute_from_commandline()
    return 0


def _cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from exchange_stream.infra.migrate import migrate

    logs.setup(settings.log_level)
    applied = asyncio.run(migrate(settings.dsn))
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    return 0


def _cmd_create_topics(settings: Settings, args: argparse.Namespace) -> int:
    from exchange_stream.infra.topics import ensure_topics

    logs.setup(settings.log_level)
    created = asyncio.run(ensure_topics(settings))
    print(f"topics: {len(settings.all_topics())} present, {len(created)} created")
    return 0


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"one of {', '.join(LOG_LEVELS)} (any case)")
    return level


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exchange-stream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser(
        "worker", help="run the Faust worker (web server, outbox relay, agents)"
    )
    worker.add_argument(
        "-l",
        "--loglevel",
        type=_log_level,
        help="log level (default LOG_LEVEL, INFO): critical, error, warning, info or debug",
    )
    worker.add_argument(
        "--web-port", type=int, metavar="PORT", help="HTTP port (default WEB_PORT, 8080)"
    )
    worker.add_argument(
        "--web-host", metavar="HOST", help="HTTP bind address (default WEB_BIND, 127.0.0.1)"
    )
    sub.add_parser("migrate", help="apply pending SQL migrations, once each")
    sub.add_parser("create-topics", help="create the topics the stack needs that are missing")
    topics.add_parser(sub)
    groups = operations.add_parsers(sub)
    devtoken.add_parser(groups[("recipients",)])
    control.add_parser(sub)
    return parser


_COMMANDS = {
    "worker": _cmd_worker,
    "migrate": _cmd_migrate,
    "create-topics": _cmd_create_topics,
    "topics": topics.run,
    # Nested commands set ``command`` to their full words (``recipients dev-token``).
    devtoken.COMMAND: devtoken.run,
    control.COMMAND: control.run,
}


def _quiet_on_closed_pipe(main: Callable[[list[str] | None], int]) -> Callable[..., int]:
    """``main``, exiting quietly with ``EXIT_CLOSED_PIPE`` (141) when stdout's reader went away
    (``exchange-stream … | head -1``), whatever the command: no traceback. The flush is inside,
    so output still buffered at the end (or at ``--help``'s exit) cannot fail after it."""

    @functools.wraps(main)
    def quiet(argv: list[str] | None = None) -> int:
        try:
            try:
                return main(argv)
            finally:
                sys.stdout.flush()
        except BrokenPipeError:
            # Python flushes stdout again at exit: give it somewhere to write that cannot fail.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return operations.EXIT_CLOSED_PIPE

    return quiet


@_quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"exchange-stream: configuration error: {exc}", file=sys.stderr)
        return operations.EXIT_USAGE
    if args.command in _COMMANDS:
        return _COMMANDS[args.command](settings, args)
    if getattr(args, "_jobs", None) == "list":
        operations.print_jobs()
        return operations.EXIT_OK
    logs.setup("WARNING")
    return operations.run(settings, args)


if __name__ == "__main__":
    sys.exit(main())
