"""JSON-lines logging with the current correlation id, and no exception text in any line.

Code logs ids and outcomes only. Structured values go in ``extra={"fields": {...}}``; the formatter
copies nothing else from a record, so a stray attribute cannot carry patient data into the log.

Exception texts can quote patient data (a driver quotes the values of a failed statement), and
the libraries under the worker (Faust, mode, aiokafka, aiohttp, asyncio) log exceptions with
their text and traceback. ``redact`` rewrites every record before a handler writes it: an
exception among the message's arguments becomes its type name, the text of the record's
exceptions (and of the one being handled where it was logged) is cut out of a message that quotes
it, and the exception is kept as its type, the types of its causes and the code locations of its
traceback (``path:line in function``), with no message and no source line. What libraries print
on stdout or stderr while mode redirects them to the log (a thread's crash handler prints a
traceback there) is withheld, and an exception nothing caught is logged, not printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import logging.config
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import orjson
from aiokafka import errors as kafka_errors

correlation_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)

# mode's Worker sends what is written on stdout and stderr to this logger (redirect_stdouts).
REDIRECT_LOGGER = "mode.redirect"
MAX_FRAMES = 30
_REDACTED = "_exchange_redacted"
# Code locations are shown relative to these: the project's root and the import path.
_ROOTS = tuple(
    f"{p}/"
    for p in sorted(
        {
            str(Path(__file__).resolve().parents[2]),
            *(str(Path(p).resolve()) for p in sys.path if p),
        },
        key=len,
        reverse=True,
    )
)


class _Label(str):
    """An exception's type name, shown bare by ``%s`` and ``%r`` alike."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


def type_name(exc: BaseException) -> str:
    """What the log shows of an exception: its class name, never its text."""
    return _Label(type(exc).__name__)


def code_location(filename: str, lineno: int | None, function: str) -> str:
    """``path:line in function``, the path relative to its ``sys.path`` entry."""
    for root in _ROOTS:
        if filename.startswith(root):
            filename = filename[len(root) :]
            break
    return f"{filename}:{lineno} in {function}"


def frame_locations(frames: Iterator[tuple[FrameType, int]]) -> list[str]:
    """The code locations of ``(frame, line)`` pairs (``traceback.walk_tb``/``walk_stack``),
    innermost last, at most ``MAX_FRAMES``: no source line, no local variable."""
    found = [code_location(f.f_code.co_filename, line, f.f_code.co_name) for f, line in frames]
    return found[-MAX_FRAMES:]


def _coroutine_frames(coro: Any) -> Iterator[tuple[FrameType, int]]:
    """The frames of a suspended coroutine and of what it awaits, outermost first."""
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            return
        yield frame, frame.f_lineno
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)


def log_stacks(logger: logging.Logger) -> None:
    """Log where every thread and every task of this thread's loop is, as code locations, one
    line each (what mode's ``cry`` prints with every frame's local variables)."""
    for thread_id, frame in sys._current_frames().items():
        stack = frame_locations(reversed(list(traceback.walk_stack(frame))))
        logger.warning("thread stack", extra={"fields": {"thread": thread_id, "stack": stack}})
    for task in asyncio.all_tasks():
        stack = frame_locations(_coroutine_frames(task.get_coro()))
        logger.warning("task stack", extra={"fields": {"task": task.get_name(), "stack": stack}})


def _tb_frames(tb: TracebackType | None) -> Iterator[tuple[FrameType, int]]:
    while tb is not None:
        yield tb.tb_frame, tb.tb_lineno
        tb = tb.tb_next


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, then its causes, contexts and (for groups) members, each once."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
        todo += list(getattr(current, "exceptions", ()) or ())
    return seen


def _future_label(fut: asyncio.Future[Any]) -> str:
    """A task or future without its repr, which quotes its exception."""
    if isinstance(fut, asyncio.Task):
        coro = fut.get_coro()
        name = getattr(coro, "__qualname__", type(coro).__name__)
        return f"<Task {fut.get_name()} {name}>"
    return f"<{type(fut).__name__}>"


def _safe(value: Any, depth: int = 0) -> Any:
    """``value`` with exceptions (and tasks, whose repr quotes theirs) as labels, into
    containers two levels deep; a container holding neither is returned as it is."""
    if isinstance(value, BaseException):
        return type_name(value)
    if isinstance(value, asyncio.Future):
        return _future_label(value)
    if depth >= 2:
        return value
    if isinstance(value, dict):
        safe = {k: _safe(v, depth + 1) for k, v in value.items()}
        return value if all(safe[k] is v for k, v in value.items()) else safe
    if isinstance(value, tuple | list | set | frozenset):
        items = [_safe(v, depth + 1) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value  # namedtuples and the like keep their type and repr
        return items if isinstance(value, list) else tuple(items)
    return value


def _exceptions_in(value: Any, depth: int = 0) -> list[BaseException]:
    if isinstance(value, BaseException):
        return _chain(value)
    if depth < 2 and isinstance(value, tuple | list | set | frozenset | dict):
        items = value.values() if isinstance(value, dict) else value
        return [e for v in items for e in _exceptions_in(v, depth + 1)]
    return []


def _texts(exc: BaseException) -> list[str]:
    """How ``exc`` may appear in a message already formatted: its repr, then its text (unless
    one character, which identifies nobody and would be cut out of every word)."""
    texts = []
    for render in (repr, str):
        # A broken __repr__ or __str__ must not break logging.
        with contextlib.suppress(Exception):
            text = render(exc)
            if len(text.strip()) > 1:
                texts.append(text)
    return texts


def _exc_summary(exc: BaseException) -> dict[str, Any]:
    chain = _chain(exc)
    frames = frame_locations(_tb_frames(exc.__traceback__))
    summary: dict[str, Any] = {"exc_type": type_name(exc)}
    if frames:
        summary["exc_at"] = frames[-1]
        summary["exc_frames"] = frames
    if len(chain) > 1:
        summary["exc_causes"] = [type_name(e) for e in chain[1:]]
    return summary


def redact(record: logging.LogRecord) -> logging.LogRecord:
    """Rewrite ``record`` in place so that no exception text or traceback is left in it (see
    module doc). Idempotent; the handler of ``logging_config`` applies it before it writes, and
    ``guard_handlers`` has every other handler do the same."""
    if getattr(record, _REDACTED, False):
        return record
    exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
    if record.name == REDIRECT_LOGGER:
        # Untyped text written by some library: it may be a traceback, so none of it is kept.
        chars = len(str(record.msg))
        record.msg = "output on stdout/stderr withheld (it may quote exception text)"
        record.fields = {"chars": chars}
    else:
        template = type_name(record.msg) if isinstance(record.msg, BaseException) else record.msg
        message = str(template)
        if record.args:
            try:
                message = message % _safe(record.args)
            except (TypeError, ValueError, KeyError):
                message = str(template)  # the template alone: the arguments did not fit it
        # An exception formatted into the message before logging (an f-string, a task's repr):
        # the record's, its arguments', and the one being handled where the record is logged
        # (``except Exception as ex: log.warning(f"... {ex}")`` passes no exc_info).
        handled = sys.exc_info()[1]
        known = [
            *(_chain(exc) if exc else []),
            *_exceptions_in(record.args),
            *(_chain(handled) if handled else []),
        ]
        for e in known:
            for text in _texts(e):
                message = message.replace(text, type_name(e))
        record.msg = message
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = {k: _safe(v) for k, v in fields.items()}
    record.args = None
    if exc is not None:
        record.exc_summary = _exc_summary(exc)
    record.exc_info = None
    record.exc_text = None
    record.stack_info = None
    setattr(record, _REDACTED, True)
    return record


class RedactExceptions(logging.Filter):
    """A handler filter that applies ``redact`` to every record, in place: the handlers after it
    (Faust's spinner, any handler added to ``loghandlers``) see the redacted record too."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact(record)
        return True


_COORDINATOR_LOGGER = "aiokafka.consumer.group_coordinator"
_COORDINATOR_LOOKUP_FAILED = "Group Coordinator Request failed: %s"
_COORDINATOR_ELECTION_ERRORS = (
    kafka_errors.GroupCoordinatorNotAvailableError,
    kafka_errors.GroupLoadInProgressError,
    kafka_errors.NotCoordinatorForGroupError,
)


class CoordinatorElection(logging.Filter):
    """Lowers aiokafka's ERROR for a group coordinator not yet elected to WARNING, for a while.

    aiokafka logs every failed coordinator lookup at ERROR, then retries the retriable ones
    itself. A brand-new broker answers the first lookup with COORDINATOR_NOT_AVAILABLE while it
    creates ``__consumer_offsets``, and a coordinator that moves or is loading answers likewise
    for a moment: nothing is wrong. A streak of such failures (no gap of ``grace_s``) is lowered
    for its first ``grace_s`` seconds; one that lasts longer is an error and stays ERROR, as do
    every other failure and every other record.
    """

    def __init__(self, grace_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.grace_s = grace_s
        self._clock = clock
        self._streak_start: float | None = None
        self._last = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.name != _COORDINATOR_LOGGER
            or record.msg != _COORDINATOR_LOOKUP_FAILED
            or record.levelno != logging.ERROR
            or not isinstance(record.args, tuple)
            or not record.args
            or not isinstance(record.args[0], _COORDINATOR_ELECTION_ERRORS)
        ):
            return True
        now = self._clock()
        if self._streak_start is None or now - self._last > self.grace_s:
            self._streak_start = now
        self._last = now
        if now - self._streak_start <= self.grace_s:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.fields = {"transient": True, "retried_by": "aiokafka"}
        return True


def _json_default(value: Any) -> str:
    return type_name(value) if isinstance(value, BaseException) else str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, correlation_id, fields, and for an
    exception ``exc_type``, ``exc_at``, ``exc_frames`` and ``exc_causes`` (see ``redact``)."""

    def format(self, record: logging.LogRecord) -> str:
        redact(record)
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        correlation_id = getattr(record, "correlation_id", None) or correlation_id_var.get()
        if correlation_id:
            entry["correlation_id"] = correlation_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({k: v for k, v in fields.items() if k not in entry})
        summary = getattr(record, "exc_summary", None)
        if isinstance(summary, dict):
            entry.update(summary)
        return orjson.dumps(entry, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()


class JsonStreamHandler(logging.StreamHandler):
    """A stream handler whose own failures are one JSON line too: ``logging``'s default prints
    a traceback and the record's message and arguments."""

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        line = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": "ERROR",
            "logger": __name__,
            "msg": "a log record could not be written",
            "record_logger": record.name,
            "exc_type": type_name(error) if error else None,
        }
        try:
            self.stream.write(orjson.dumps(line).decode() + self.terminator)
            self.flush()
        except Exception:  # noqa: S110 - nowhere left to report to
            pass


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """A ``dictConfig`` that sends every logger to stderr as JSON lines, redacted."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {
            # The coordinator filter reads the exception argument: it runs before redaction.
            "coordinator_election": {"()": CoordinatorElection},
            "redact": {"()": RedactExceptions},
        },
        "handlers": {
            "stderr": {
                "()": JsonStreamHandler,
                "formatter": "json",
                "filters": ["coordinator_election", "redact"],
                "stream": sys.stderr,
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            # aiokafka is chatty at INFO about every (re)connection; warnings still pass.
            "aiokafka": {"level": "WARNING"},
            "botocore": {"level": "WARNING"},
            "aiobotocore": {"level": "WARNING"},
        },
    }


def guard_handlers() -> None:
    """Put ``RedactExceptions`` first on every handler configured so far (Faust adds its own
    after ``logging_config``), so no handler can write a record before it is redacted."""
    loggers = [logging.root, *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if not any(isinstance(f, RedactExceptions) for f in handler.filters):
                handler.filters.insert(0, RedactExceptions())


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger(__name__).critical("uncaught exception", exc_info=(exc_type, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback)


def install_excepthooks() -> None:
    """Log an exception no code caught (in any thread) as one redacted line, instead of
    Python's traceback with the exception's text on stderr; the exit code stays 1."""
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def setup(level: str = "INFO") -> None:
    """Install the JSON logging configuration (for CLI commands; the worker passes it to Faust)
    and the exception hooks."""
    logging.config.dictConfig(logging_config(level))
    guard_handlers()
    install_excepthooks()
