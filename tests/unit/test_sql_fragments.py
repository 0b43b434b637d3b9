"""The query loader's fragments: one condition written once, taken in by several statements."""

from __future__ import annotations

import pytest

from exchange_stream.infra.sql import expand, parse_blocks, q

TEXT = """
-- fragment: positive
-- x is above $1, below $2
(x > $1 AND x < $2)

-- name: one
SELECT 1 WHERE {positive $1}

-- name: two
SELECT 2 WHERE y = $1 AND {positive $2} AND z = $4
"""


def test_a_fragment_is_taken_in_with_its_parameters_renumbered_and_without_its_comment() -> None:
    statements, fragments = parse_blocks(TEXT)
    assert set(statements) == {"one", "two"} and set(fragments) == {"positive"}
    assert expand(statements["one"], fragments) == "SELECT 1 WHERE (x > $1 AND x < $2)"
    assert (
        expand(statements["two"], fragments)
        == "SELECT 2 WHERE y = $1 AND (x > $2 AND x < $3) AND z = $4"
    )


def test_an_unknown_fragment_or_a_name_used_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="no fragment 'missing'"):
        expand("SELECT {missing $1}", {})
    with pytest.raises(ValueError, match="defined twice"):
        parse_blocks("-- fragment: a\n(1)\n-- name: a\nSELECT 1\n")


def test_the_grant_condition_is_one_fragment_and_no_statement_keeps_a_placeholder() -> None:
    with pytest.raises(KeyError):
        q("granted")
    page = q("export_job_records")
    assert "{granted" not in page and "$8::bool OR EXISTS" in page
