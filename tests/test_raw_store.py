"""The raw-object store on the real S3 server, through the service's own hot-path client: what it
writes is what botocore reads back, the signed body hash is enforced, a missing object is told
apart from an unavailable store."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid

import pytest
from botocore.exceptions import ClientError

from exchange_stream.infra.config import Settings
from exchange_stream.infra.storage import ObjectMissing, StorageUnavailable, open_store
from tests.support import independent_s3_client, s3_read_independently

KEYS = [
    "Hospital A {run}/plain.json",
    "100% a+b?c#d=%2F {run}/reserved.json",
    "Clinique Saint-Éloi \u2013 東京 {run}/accents.json",
]


async def test_put_then_get_round_trips_and_botocore_reads_the_same_bytes(
    settings: Settings,
) -> None:
    run = uuid.uuid4().hex[:8]
    async with open_store(settings) as store:  # no in-memory copy: GET goes to the server
        for i, template in enumerate(KEYS):
            key = template.format(run=run)
            body = b'{"n": %d, "pad": "%s"}' % (i, b"x" * (1000 * i))
            await store.put(key, body)
            assert await store.get(key) == body, key
            assert await s3_read_independently(settings, key) == body, key
        # One kept-alive connection carried all of it, and is still there for the next call.
        assert len(store.http._idle) == 1


async def test_delete_removes_the_object_and_a_missing_one_is_no_error(settings: Settings) -> None:
    key = f"Hospital A {uuid.uuid4().hex[:8]}/gone.json"
    async with open_store(settings) as store:
        await store.put(key, b'{"n": 1}')
        await store.delete(key)
        with pytest.raises(ObjectMissing):
            await store.get(key)
        await store.delete(key)
    with pytest.raises(ClientError):
        await s3_read_independently(settings, key)


async def test_a_body_that_does_not_match_its_signed_hash_is_refused_and_not_stored(
    settings: Settings,
) -> None:
    key = f"raw-store-test/{uuid.uuid4()}.json"
    async with open_store(settings) as store:
        with pytest.raises(StorageUnavailable, match="PUT answered 4"):
            await store.put(key, b'{"damaged": true}', sha256=hashlib.sha256(b"{}").hexdigest())
        with pytest.raises(ObjectMissing):
            await store.get(key)
    async with independent_s3_client(settings) as client:
        with pytest.raises(ClientError) as info:
            await client.head_object(Bucket=settings.raw_bucket, Key=key)
    assert info.value.response["Error"]["Code"] in ("404", "NoSuchKey")


async def test_wrong_credentials_are_an_unavailable_store_not_a_missing_object(
    settings: Settings,
) -> None:
    wrong = dataclasses.replace(settings, minio_secret_key="not-the-secret")
    async with open_store(wrong) as store:
        with pytest.raises(StorageUnavailable, match="GET answered 403"):
            await store.get(f"raw-store-test/{uuid.uuid4()}.json")
