"""Processing errors as values: a type, a stage, a sanitised message, and transient or not.

Messages are written by this code from field names and error kinds, never copied from a payload
or from a driver's exception text, so they are safe for the ledger, logs and DLQ envelopes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessingError(Exception):
    """A failure of one record at one stage."""

    type: str
    stage: str
    message: str
    transient: bool

    def __str__(self) -> str:
        return f"{self.stage}/{self.type}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message, "stage": self.stage}


def permanent(type_: str, stage: str, message: str) -> ProcessingError:
    """Retrying cannot help (bad payload, checksum mismatch): DLQ at once."""
    return ProcessingError(type_, stage, message, transient=False)


def transient(type_: str, stage: str, message: str) -> ProcessingError:
    """A dependency did not answer: retry with backoff, then DLQ after MAX_ATTEMPTS."""
    return ProcessingError(type_, stage, message, transient=True)
