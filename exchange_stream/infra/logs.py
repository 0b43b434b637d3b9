"""JSON-lines logging with the current correlation id.

Code logs ids and outcomes only. Structured values go in ``extra={"fields": {...}}``; the formatter
copies nothing else from a record, so a stray attribute cannot carry patient data into the log.
"""

from __future__ import annotations

import contextvars
import logging
import logging.config
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

import orjson

correlation_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, correlation_id, fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
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
        if record.exc_info:
            # Exception type and traceback frames, never the message: exception texts from
            # drivers can quote the values of a failed statement.
            exc_type, _, tb = record.exc_info
            entry["exc_type"] = exc_type.__name__ if exc_type else None
            entry["exc_frames"] = "".join(traceback.format_tb(tb))[-4000:]
        return orjson.dumps(entry, default=str).decode()


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """A ``dictConfig`` that sends every logger to stderr as JSON lines."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": sys.stderr}
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            # aiokafka is chatty at INFO about every (re)connection; warnings still pass.
            "aiokafka": {"level": "WARNING"},
            "botocore": {"level": "WARNING"},
            "aiobotocore": {"level": "WARNING"},
        },
    }


def setup(level: str = "INFO") -> None:
    """Install the JSON logging configuration (for CLI commands; the worker passes it to Faust)."""
    logging.config.dictConfig(logging_config(level))
