"""The log carries exception types and code locations, never exception text or a traceback, from
the project's loggers and the libraries' alike; aiokafka's coordinator election is no error."""

from __future__ import annotations

import asyncio
import io
import logging
import logging.config
import subprocess
import sys
from collections.abc import Iterator

import orjson
import pytest
from aiokafka import errors as kafka_errors

from exchange_stream.infra import logs

SECRET = "Zq-Ada-Lovelace-1815-12-10"


class PatientError(ValueError):
    """An exception whose text quotes patient data, as a driver's may."""


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """The worker's logging configuration (``logs.logging_config``), writing to a buffer."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    named = {n: logging.getLogger(n).level for n in ("aiokafka", "botocore", "aiobotocore")}
    buf = io.StringIO()
    config = logs.logging_config("DEBUG")
    config["handlers"]["stderr"]["stream"] = buf
    logging.config.dictConfig(config)
    try:
        yield buf
    finally:
        root.handlers[:], root.level = saved
        for name, level in named.items():
            logging.getLogger(name).setLevel(level)


def _lines(buf: io.StringIO) -> list[dict]:
    return [orjson.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def _assert_clean(text: str) -> None:
    assert SECRET not in text
    assert "Traceback" not in text
    assert 'File "' not in text
    assert "raise PatientError" not in text  # no source line either


def _raise_patient_error() -> None:
    raise PatientError(f"duplicate key value: (name)=({SECRET})")


@pytest.mark.parametrize("logger_name", ["exchange_stream.pipeline.normalize", "faust.worker"])
def test_logger_exception_shows_the_type_and_where_never_the_text(
    log_output: io.StringIO, logger_name: str
) -> None:
    try:
        _raise_patient_error()
    except PatientError:
        logging.getLogger(logger_name).exception("batch failed")
    _assert_clean(log_output.getvalue())
    (line,) = _lines(log_output)
    assert (line["level"], line["msg"], line["exc_type"]) == (
        "ERROR",
        "batch failed",
        "PatientError",
    )
    assert line["exc_at"].startswith("tests/unit/test_logs.py:")
    assert line["exc_at"].endswith(" in _raise_patient_error")
    assert len(line["exc_frames"]) == 2


def test_exceptions_among_the_arguments_are_their_type_names(log_output: io.StringIO) -> None:
    exc = PatientError(SECRET)
    log = logging.getLogger("mode.services")
    log.error("Error: %r", exc)  # mode's Worker, on a failed start
    log.warning("errors: %s", [exc, KeyError(SECRET)])
    log.warning("%(reason)s", {"reason": exc})
    _assert_clean(log_output.getvalue())
    assert [line["msg"] for line in _lines(log_output)] == [
        "Error: PatientError",
        "errors: [PatientError, KeyError]",
        "PatientError",
    ]


def test_exception_text_formatted_into_the_message_is_cut_out(log_output: io.StringIO) -> None:
    log = logging.getLogger("faust.tables.recovery")
    try:
        _raise_patient_error()
    except PatientError as ex:
        log.warning(f"Error in recovery {ex}")  # faust's own style: no exc_info, no argument
        log.error(f"Error: {ex!r}", exc_info=True)
    _assert_clean(log_output.getvalue())
    assert [line["msg"] for line in _lines(log_output)] == [
        "Error in recovery PatientError",
        "Error: PatientError",
    ]


async def test_a_task_that_failed_is_shown_without_its_exception() -> None:
    async def fails() -> None:
        raise PatientError(SECRET)

    task = asyncio.ensure_future(fails())
    with pytest.raises(PatientError):
        await task
    record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "future: %r", (task,), None)
    # asyncio's own handler formats the task's repr into the message, with the exception.
    context = logging.LogRecord(
        "asyncio", logging.ERROR, __file__, 1, f"future: {task!r}", None, None
    )
    context.exc_info = (PatientError, task.exception(), None)
    for r in (record, context):
        text = logs.JsonFormatter().format(r)
        assert SECRET not in text, text


def test_causes_are_named_by_type(log_output: io.StringIO) -> None:
    try:
        try:
            _raise_patient_error()
        except PatientError as inner:
            raise RuntimeError(f"wrapped {inner}") from inner
    except RuntimeError:
        logging.getLogger("exchange_stream.ops.framework").error("failed", exc_info=True)
    _assert_clean(log_output.getvalue())
    (line,) = _lines(log_output)
    assert (line["exc_type"], line["exc_causes"]) == ("RuntimeError", ["PatientError"])


def test_what_libraries_print_on_redirected_stderr_is_withheld(log_output: io.StringIO) -> None:
    # mode's Worker logs every write to stdout/stderr here; a thread's crash handler writes a
    # traceback, one line at a time.
    redirect = logging.getLogger(logs.REDIRECT_LOGGER)
    for text in ("Traceback (most recent call last):", f"PatientError: {SECRET}"):
        redirect.warning(text)
    _assert_clean(log_output.getvalue())
    assert [line["chars"] for line in _lines(log_output)] == [34, 14 + len(SECRET)]


def test_fields_holding_an_exception_show_its_type(log_output: io.StringIO) -> None:
    logging.getLogger("exchange_stream.x").warning(
        "failed", extra={"fields": {"error": PatientError(SECRET), "n": 1}}
    )
    (line,) = _lines(log_output)
    assert (line["error"], line["n"]) == ("PatientError", 1)


def test_handlers_faust_adds_after_the_configuration_are_guarded_too(
    log_output: io.StringIO,
) -> None:
    plain = io.StringIO()
    handler = logging.StreamHandler(plain)  # a plain formatter prints exc_info as a traceback
    logging.getLogger().addHandler(handler)
    child = logging.getLogger("faust.child-with-own-handler")
    child_out = io.StringIO()
    child_handler = logging.StreamHandler(child_out)
    child.addHandler(child_handler)
    try:
        logs.guard_handlers()
        try:
            _raise_patient_error()
        except PatientError:
            child.exception("crashed: %r", PatientError(SECRET))
    finally:
        logging.getLogger().removeHandler(handler)
        child.removeHandler(child_handler)
    for text in (plain.getvalue(), child_out.getvalue(), log_output.getvalue()):
        assert "crashed: PatientError" in text
        _assert_clean(text)


def test_a_failing_record_is_reported_without_its_message_or_arguments() -> None:
    class Broken(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            raise ValueError(SECRET)

    buf = io.StringIO()
    handler = logs.JsonStreamHandler(buf)
    handler.setFormatter(Broken())
    handler.handle(logging.LogRecord("x", logging.INFO, __file__, 1, SECRET, (SECRET,), None))
    (line,) = _lines(buf)
    assert (line["msg"], line["exc_type"]) == ("a log record could not be written", "ValueError")
    assert SECRET not in buf.getvalue()


def _coordinator_failure(error: Exception) -> None:
    # aiokafka.consumer.group_coordinator, when a FindCoordinator request fails.
    logging.getLogger("aiokafka.consumer.group_coordinator").error(
        "Group Coordinator Request failed: %s", error
    )


def test_a_coordinator_not_yet_elected_is_a_warning(log_output: io.StringIO) -> None:
    for _ in range(3):
        _coordinator_failure(kafka_errors.GroupCoordinatorNotAvailableError())
    _coordinator_failure(kafka_errors.GroupLoadInProgressError())
    lines = _lines(log_output)
    assert [line["level"] for line in lines] == ["WARNING"] * 4
    assert lines[0]["msg"] == "Group Coordinator Request failed: GroupCoordinatorNotAvailableError"
    assert lines[0]["transient"] is True


def test_other_coordinator_failures_stay_errors(log_output: io.StringIO) -> None:
    _coordinator_failure(kafka_errors.KafkaConnectionError())
    _coordinator_failure(kafka_errors.GroupAuthorizationFailedError())
    logging.getLogger("aiokafka.consumer.group_coordinator").error(
        "Error sending JoinGroupRequest_v5 to node %s [%s] -- marking coordinator dead",
        1,
        kafka_errors.GroupCoordinatorNotAvailableError(),
    )
    assert [line["level"] for line in _lines(log_output)] == ["ERROR"] * 3


def test_a_coordinator_unavailable_past_the_grace_period_is_an_error() -> None:
    now = [0.0]
    election = logs.CoordinatorElection(grace_s=30.0, clock=lambda: now[0])

    def level_at(t: float) -> str:
        now[0] = t
        record = logging.LogRecord(
            "aiokafka.consumer.group_coordinator",
            logging.ERROR,
            __file__,
            1,
            "Group Coordinator Request failed: %s",
            (kafka_errors.GroupCoordinatorNotAvailableError(),),
            None,
        )
        election.filter(record)
        return record.levelname

    # One streak of retries (every 5 s here): lowered for 30 s, then an error.
    assert [level_at(t / 10) for t in range(0, 301, 50)] == ["WARNING"] * 7
    assert level_at(30.5) == "ERROR"
    # Quiet for longer than the grace period: the next failure starts a new streak.
    assert level_at(100.0) == "WARNING"


@pytest.mark.parametrize("where", ["main", "thread"])
def test_an_uncaught_exception_is_one_redacted_line(where: str) -> None:
    code = (
        "import threading\n"
        "from exchange_stream.infra import logs\n"
        "logs.setup()\n"
        "def fail():\n"
        f"    raise ValueError({SECRET!r})\n"
        + ("fail()\n" if where == "main" else "t = threading.Thread(target=fail)\nt.start()\n")
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == (1 if where == "main" else 0)
    _assert_clean(result.stderr)
    (line,) = [orjson.loads(x) for x in result.stderr.splitlines()]
    assert (line["level"], line["msg"], line["exc_type"]) == (
        "CRITICAL",
        "uncaught exception",
        "ValueError",
    )


async def test_stacks_are_code_locations_through_awaits(log_output: io.StringIO) -> None:
    release = asyncio.Event()

    async def inner(batch: list[str]) -> None:
        await release.wait()

    async def outer() -> None:
        await inner([SECRET])  # a local variable a frame dump would print

    task = asyncio.ensure_future(outer())
    await asyncio.sleep(0)
    logs.log_stacks(logging.getLogger("exchange_stream.app"))
    release.set()
    await task
    _assert_clean(log_output.getvalue())
    (mine,) = [
        line
        for line in _lines(log_output)
        if line["msg"] == "task stack" and line["task"] == task.get_name()
    ]
    assert [frame.rsplit(" in ", 1)[1] for frame in mine["stack"][:2]] == ["outer", "inner"]
