"""A standard FHIR Bulk Data client written by others, for tests: SMART Fetch, the SMART Health
IT team's command-line Bulk Data client (``smart-fetch`` on PyPI).

Given nothing but a FHIR base URL, a client id and a private key, it does what any Bulk Data
server must answer: ``GET <base>/metadata`` (CapabilityStatement) and ``GET
<base>/.well-known/smart-configuration`` (the token endpoint), a client assertion signed RS384 or
ES384 at that endpoint asking for ``system/<Type>.read`` scopes, a system-level ``GET
<base>/$export`` with ``Prefer: respond-async``, polls of the status URL, the downloads with the
bearer token, and a ``DELETE`` of the status URL when done. It exports the types it knows
(Patient, Encounter, Observation among them; not Claim) that the CapabilityStatement lists.

The client is installed on first use into a virtual environment of its own under
``.cache/bulk-client/`` (git-ignored), so that its dependencies never meet the project's; later
uses find it there at once. Without a reachable package registry the install raises
``RegistryUnreachable``, the one failure a test may skip on.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import ROOT

CLIENT = "smart-fetch"
VERSION = "1.0.3"
# The client and the library that does its HTTP and SMART authentication, pinned so that a run
# is repeatable; their own dependencies float within the ranges they declare.
REQUIREMENTS = (f"{CLIENT}=={VERSION}", "cumulus-fhir-support==1.12.2")
CACHE = ROOT / ".cache" / "bulk-client"
INSTALL_DIR = CACHE / f"{CLIENT}-{VERSION}"
EXECUTABLE = INSTALL_DIR / "bin" / CLIENT
_MARKER = INSTALL_DIR / "installed.json"
INSTALL_TIMEOUT_S = 600.0
# What pip prints when it never reached the index (as opposed to a package it could not use).
_NETWORK_FAILURES = (
    "NewConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "Max retries exceeded",
    "Network is unreachable",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Connection refused",
    "ProxyError",
)
SIGNING_ALGORITHMS = {"RSA": "RS384", "EC": "ES384"}


class RegistryUnreachable(RuntimeError):
    """The package registry could not be reached, so the client could not be installed."""


class ClientTimedOut(AssertionError):
    """The client did not finish within its time; carries what it had printed."""


@dataclass(frozen=True)
class CompletedRun:
    """One run of the client: its exit code and output, and the files it downloaded."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    dest: Path

    @property
    def output_files(self) -> list[Path]:
        """The downloaded NDJSON files of resources (the manifest's ``output``), one per file,
        named ``<Type>.<n>.ndjson`` (``.gz`` when the client compressed them)."""
        return sorted(p for p in self.dest.glob("*.ndjson*") if p.name != "log.ndjson")

    @property
    def error_files(self) -> list[Path]:
        """The downloaded files of the manifest's ``error`` (OperationOutcome NDJSON)."""
        return sorted((self.dest / "error").glob("*.ndjson*"))

    def resources(self) -> dict[Path, list[dict[str, Any]]]:
        """Every line of every output file parsed as JSON, by file."""
        return {path: read_ndjson(path) for path in self.output_files}

    def log_events(self) -> list[dict[str, Any]]:
        """The client's own log of the export (``log.ndjson``: kickoff, status_complete,
        download_request, download_complete, export_complete, ...)."""
        path = self.dest / "log.ndjson"
        return read_ndjson(path) if path.exists() else []

    def describe(self) -> str:
        """What to print when a run did not go as expected."""
        return (
            f"$ {' '.join(self.argv)}\nexit code {self.returncode}\n"
            f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}\n"
            f"--- files\n{sorted(str(p.relative_to(self.dest)) for p in self.dest.rglob('*'))}"
        )


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    """The JSON object of each non-empty line of an NDJSON file, gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def private_jwk(key: Any, *, kid: str) -> dict[str, Any]:
    """A private JWK of an RSA or EC P-384 key (a ``cryptography`` private key) as SMART clients
    keep them: with ``kid``, ``alg`` (RS384 or ES384) and ``key_ops: ["sign"]``."""
    import jwt

    if hasattr(key, "curve"):
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(key, as_dict=True)
    else:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key, as_dict=True)
    return {**jwk, "kid": kid, "alg": SIGNING_ALGORITHMS[jwk["kty"]], "key_ops": ["sign"]}


def public_jwks(*private: dict[str, Any]) -> dict[str, Any]:
    """The JWKS a server registers for these private JWKs: their public halves only."""
    public_members = {"kty", "kid", "alg", "crv", "x", "y", "n", "e"}
    keys = [
        {**{k: v for k, v in jwk.items() if k in public_members}, "key_ops": ["verify"]}
        for jwk in private
    ]
    return {"keys": keys}


def ensure_installed() -> Path:
    """The client's executable, installed into ``.cache/bulk-client/`` first if it is not there.
    Safe to call from several processes at once; quick once installed."""
    if _installed():
        return EXECUTABLE
    CACHE.mkdir(parents=True, exist_ok=True)
    with _lock(CACHE / ".lock"):
        if not _installed():
            _install()
    return EXECUTABLE


def _installed() -> bool:
    return _MARKER.exists() and EXECUTABLE.exists()


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _install() -> None:
    shutil.rmtree(INSTALL_DIR, ignore_errors=True)  # a half-done install is started over
    _run([sys.executable, "-m", "venv", str(INSTALL_DIR)], "create the client's venv")
    pip = [str(INSTALL_DIR / "bin" / "python"), "-m", "pip"]
    # Short network timeouts: without a registry the install fails in seconds, not minutes.
    result = subprocess.run(
        [*pip, "install", "--timeout", "20", "--retries", "1", *REQUIREMENTS],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    if result.returncode != 0:
        output = f"{result.stdout}\n{result.stderr}"
        shutil.rmtree(INSTALL_DIR, ignore_errors=True)
        if any(sign in output for sign in _NETWORK_FAILURES):
            raise RegistryUnreachable(
                f"{CLIENT} {VERSION} could not be installed: the package registry is not "
                f"reachable.\n{output[-3000:]}"
            )
        raise RuntimeError(f"installing {CLIENT} {VERSION} failed:\n{output[-6000:]}")
    freeze = _run([*pip, "freeze"], "list the client's packages")
    _MARKER.write_text(json.dumps({"requirements": REQUIREMENTS, "freeze": freeze.split()}))


def _run(argv: list[str], what: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"could not {what}:\n{result.stdout}\n{result.stderr}")
    return result.stdout


async def run_standard_client(
    fhir_base_url: str,
    client_id: str,
    private_key: dict[str, Any],
    dest: Path,
    *,
    timeout_s: float = 300.0,
) -> CompletedRun:
    """A system-level Bulk Data export of ``fhir_base_url`` into ``dest`` by the standard client,
    authenticated as ``client_id`` with ``private_key`` (a private JWK with ``kid`` and ``alg``,
    see ``private_jwk``). Only what any server needs is given: the base URL, the client id and
    the key. The token endpoint, the resource types and the rest the client finds itself."""
    executable = await asyncio.to_thread(ensure_installed)
    if dest.exists() and any(dest.iterdir()):
        # The client resumes an export it finds recorded in its folder: start clean.
        raise ValueError(f"{dest} must be a new or empty folder")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bulk-client-key-") as keydir:
        key_path = Path(keydir) / "client.jwks"
        key_path.write_text(json.dumps({"keys": [private_key]}))
        key_path.chmod(0o600)
        argv = (
            str(executable),
            "bulk",
            "--fhir-url",
            fhir_base_url,
            "--smart-client-id",
            client_id,
            "--smart-key",
            str(key_path),
            str(dest),
        )
        # A wide, plain console: the client prints with rich, and tests read its output.
        env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = await proc.communicate()
            run = CompletedRun(
                argv, -9, out.decode(errors="replace"), err.decode(errors="replace"), dest
            )
            raise ClientTimedOut(
                f"{CLIENT} did not finish within {timeout_s} s\n{run.describe()}"
            ) from None
    return CompletedRun(
        argv, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), dest
    )
