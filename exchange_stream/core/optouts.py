"""An opt-out's identity, tokenized: what the exchange keeps of a patient who asked to be left
out, and nothing more.

A ``patient`` object (the fields of ingest's ``patient``, v1 or v2 names, as partners already
send them) becomes its master token (the same function as ``/tokenize`` and the normalizer) and
its match tokens of the linking rules (``core/match_tokens.py``), so that the opt-out reaches
the person however the person's records spell the name. The identity itself is never stored
and never leaves this function: an error names the field, never its value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from exchange_stream.core.identity import IdentityError, Tokenizer
from exchange_stream.core.match_tokens import LINKING_RULES, MatchKeys, match_tokens
from exchange_stream.core.matching import format_of, match_attributes

# At most this many identities per request or command (a file is sent in batches of it).
MAX_IDENTITIES = 1000


@dataclass(frozen=True)
class OptOutTokens:
    """One identity as the exchange keeps it: its master token and its linking tokens."""

    patient_token: str
    match_tokens: Mapping[str, bytes]

    def as_params(self) -> dict[str, Any]:
        """The JSON form commands carry (``contracts/commands/opt_outs_add.json``)."""
        return {
            "patient_token": self.patient_token,
            "match_tokens": {rule: t.hex() for rule, t in sorted(self.match_tokens.items())},
        }

    @classmethod
    def from_params(cls, doc: Mapping[str, Any]) -> OptOutTokens:
        return cls(
            doc["patient_token"],
            {rule: bytes.fromhex(t) for rule, t in (doc.get("match_tokens") or {}).items()},
        )

    def rows(self) -> tuple[list[str], list[bytes]]:
        """The match tokens as the two arrays ``opt_out_add`` takes (rule, token)."""
        rules = sorted(self.match_tokens)
        return rules, [self.match_tokens[r] for r in rules]


def tokenize_identity(
    patient: object, tokenizer: Tokenizer, keys: MatchKeys, *, prefix: str = "patient."
) -> OptOutTokens:
    """The tokens of one ``patient`` object; ``IdentityError`` names what is wrong."""
    if not isinstance(patient, Mapping):
        raise IdentityError(prefix.rstrip(".") or "patient", "invalid")
    fmt = format_of(patient)
    given, family, dob, ssn = fmt.identity(patient)
    try:
        master = tokenizer.token(given, family, dob, ssn)
    except IdentityError as exc:
        # The format's own field names (first_name or given_name …), as the caller wrote them.
        raise IdentityError(f"{prefix}{fmt.body_field(exc.field)}", exc.reason) from None
    found = match_tokens(match_attributes(patient, fmt), keys)
    return OptOutTokens(master, {r: t for r, t in found.items() if r in LINKING_RULES})
