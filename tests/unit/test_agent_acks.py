"""Why the normalizer runs one actor: how faust-streaming turns acknowledgements into commits.

Faust commits, per partition, the end of the first run of consecutive acknowledged offsets. It
checks for an unacknowledged head only against a committed offset it knows, and only for a gap
of two or more. So when batches of one partition are acknowledged out of order (two actors
sharing it), the commit can pass events still waiting to be processed; at the next rebalance
the consumer seeks to that commit and those events are never processed. A fault run on a slow
machine lost two records this way (a second worker joined the group while the first worker's
two actors held batches of one partition). With one actor, acknowledgements come in offset
order and the first run is always the real head.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

from faust.transport.consumer import Consumer
from faust.types import TP
from intervaltree import IntervalTree

from exchange_stream.pipeline.agents import NORMALIZER_ACTORS

TP0 = TP("ingested", 0)


def _new_offset(acked: list[int], committed: int | None) -> int | None:
    """Faust's own computation of the offset to commit, on the state it keeps per partition."""
    state = SimpleNamespace(
        _acked={TP0: list(acked)},
        _acked_index={TP0: set(acked)},
        _gap=defaultdict(IntervalTree),
        _committed_offset=defaultdict(lambda: None, {TP0: committed}),
    )
    return Consumer._new_offset(state, TP0)  # type: ignore[arg-type]


def test_out_of_order_acks_commit_past_events_still_in_hand() -> None:
    # Offsets 0-4 are another actor's batch, not done; 5-9 were acknowledged first.
    assert _new_offset([5, 6, 7, 8, 9], committed=None) == 10
    # Known committed offset 5 (next to read), offset 5 still in hand, 6-9 acknowledged.
    assert _new_offset([6, 7, 8, 9], committed=5) == 10
    # Only a head gap of two or more against a known commit is held back.
    assert _new_offset([7, 8, 9], committed=5) is None


def test_in_order_acks_commit_exactly_what_was_processed() -> None:
    assert _new_offset([0, 1, 2, 3, 4], committed=None) == 5
    assert _new_offset([5, 6, 7], committed=5) == 8


def test_the_worker_declares_the_normalizer_with_one_actor() -> None:
    from exchange_stream.app import create_app
    from exchange_stream.infra.config import Settings

    app = create_app(Settings.from_env({"ENV": "local"}))
    (agent,) = [a for a in app.agents.values() if a.name.endswith("normalize")]
    assert agent.concurrency == NORMALIZER_ACTORS == 1
