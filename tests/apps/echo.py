"""A minimal Faust app for the broker test: its agent appends every message to a file."""

from __future__ import annotations

import os
from pathlib import Path

import faust

app = faust.App(
    os.environ["TEST_APP_ID"],
    broker=f"kafka://{os.environ.get('KAFKA_BROKERS', '127.0.0.1:9092')}",
    store="memory://",
    web_enabled=False,
    topic_disable_leader=True,
    consumer_auto_offset_reset="earliest",
    datadir=os.environ["TEST_DATADIR"],
)
topic = app.topic(os.environ["TEST_TOPIC"], value_serializer="raw", key_serializer="raw")
out = Path(os.environ["TEST_OUT"])


@app.agent(topic)
async def echo(stream: faust.StreamT) -> None:
    async for value in stream:
        with out.open("ab") as f:
            f.write(value + b"\n")


if __name__ == "__main__":
    app.main()
