"""Commands and the CLI, without a worker: parsing, parameters from contracts, exit codes."""

from __future__ import annotations

import orjson
import pytest

from exchange_stream.cli import operations
from exchange_stream.cli.main import build_parser
from exchange_stream.ops.control import CommandInvalid, parse_command
from exchange_stream.ops.registry import JOBS, OPERATIONS


def _command(**doc: object) -> bytes:
    return orjson.dumps({"command_id": "cmd-00000001", **doc})


def test_a_command_names_its_operation_and_gets_the_contract_defaults() -> None:
    cmd = parse_command(_command(command="replay", params={"source": "Hospital A"}))
    assert cmd.operation is OPERATIONS["replay"]
    assert cmd.params == {
        "source": "Hospital A",
        "prefix": "",
        "emit_version": "auto",
        "dry_run": False,
        "verify": False,
    }


def test_run_job_names_a_job_and_carries_its_own_params() -> None:
    cmd = parse_command(
        _command(command="run_job", params={"job": "data-quality", "params": {"window_s": 60}})
    )
    assert cmd.operation is JOBS["data-quality"]
    assert cmd.params["window_s"] == 60 and cmd.params["stuck_after_s"] == 900


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"command": "replay", "params": {"limit": 5}}, "missing field: params.source"),
        ({"command": "explode", "params": {}}, "invalid field: command"),
        ({"command": "dlq_redrive", "params": {"version": "v3"}}, "invalid field: params.version"),
        ({"command": "dlq_redrive", "params": {"version": "3"}}, "invalid field: params.version"),
        (
            {"command": "replay", "params": {"source": "a", "emit_version": "v7"}},
            "invalid field: params.emit_version",
        ),
        ({"command": "reconcile", "params": {"source": "a", "x": 1}}, "unknown field: params.x"),
        (
            {"command": "run_job", "params": {"job": "data-quality", "params": {"window_s": 0}}},
            "invalid field: params.params.window_s",
        ),
        (
            {
                "command": "run_job",
                "params": {
                    "job": "materialize-patient-index",
                    "params": {"dry_run": True, "verify": True},
                },
            },
            "dry_run and verify exclude each other",
        ),
        ({"command": "run_job", "params": {"job": "nope"}}, "unknown job"),
        ({"command": "replay", "params": {"source": "a/b"}}, "invalid field: params.source"),
    ],
)
def test_invalid_commands_name_the_problem(doc: dict, reason: str) -> None:
    with pytest.raises(CommandInvalid) as caught:
        parse_command(_command(**doc))
    assert caught.value.reason.startswith(reason)
    assert caught.value.command_id == "cmd-00000001"


@pytest.mark.parametrize("value", [b"{nope", b"[]", b'{"command": "replay"}'])
def test_malformed_messages_are_invalid_without_an_id(value: bytes) -> None:
    with pytest.raises(CommandInvalid) as caught:
        parse_command(value)
    assert caught.value.command_id is None


@pytest.mark.parametrize(
    ("argv", "name", "params"),
    [
        (
            ["replay", "--source", "s", "--dry-run", "--limit", "3"],
            "replay",
            {"source": "s", "dry_run": True, "limit": 3},
        ),
        (
            ["reconcile", "--source", "s", "--repair", "--older-than-s", "5"],
            "reconcile",
            {"source": "s", "repair": True, "older_than_s": 5.0},
        ),
        (["dlq", "redrive", "--version", "v1"], "dlq_redrive", {"version": "v1"}),
        (["jobs", "run", "data-quality", "--window-s", "60"], "data-quality", {"window_s": 60}),
        (
            ["jobs", "run", "materialize-patient-index", "--verify"],
            "materialize-patient-index",
            {"verify": True},
        ),
    ],
)
def test_cli_options_are_the_operations_contract(argv: list[str], name: str, params: dict) -> None:
    args = build_parser().parse_args(argv)
    op = OPERATIONS[name]
    assert operations.params_from_args(op, args) == params
    assert op.params(params)  # valid under the contract


def test_every_cli_option_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for op in OPERATIONS.values():
        for spec in op.schema()["properties"].values():
            assert spec.get("description"), op.name
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--help"])
    shown = capsys.readouterr().out
    assert "--loglevel" in shown and "--web-port" in shown and "--web-host" in shown


@pytest.mark.parametrize(
    ("final", "code"),
    [
        ({"status": "succeeded", "result": {}}, 0),
        ({"status": "succeeded", "result": {"gaps": 2}}, 3),
        ({"status": "succeeded", "result": {"ok": False}}, 3),
        ({"status": "failed", "result": None}, 1),
        ({"status": "rejected"}, 1),
        ({"status": "duplicate", "previous_status": "succeeded", "result": {}}, 0),
        ({"status": "duplicate", "previous_status": "failed", "result": None}, 1),
    ],
)
def test_one_table_of_exit_codes(final: dict, code: int) -> None:
    assert operations.exit_code(final) == code


def test_worker_options_override_settings() -> None:
    args = build_parser().parse_args(["worker", "-l", "debug", "--web-port", "9191"])
    assert (args.loglevel, args.web_port, args.web_host) == ("DEBUG", 9191, None)
