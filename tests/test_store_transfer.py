"""Big-file transfers of the object stores: measured choice of the way, integrity kept.

A pull fetches a big file's first stretch by one stream and the next by parallel ranges,
then the rest by whichever measured faster; the store keeps that verdict, so its later
pulls go that way without measuring again. A push sends its parts ``max_concurrency`` at a
time. Whichever way wins, every byte is hashed on its way in and a stored file that does
not match its manifest is refused. Real SeaweedFS and Azurite; the "slow" ways below are
the real backends with a delay added to one primitive, so the choice is known in advance.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prodml.core.bundle import write_manifest
from prodml.core.errors import BundleError
from prodml.plugins.stores.azure_blob import AzureBlobStore, AzureBlobStoreConfig
from prodml.plugins.stores.s3 import S3Store, S3StoreConfig

pytestmark = [pytest.mark.slow]

MB = 1 << 20
BIG = "weights.bin"


def bundle_with_big_file(folder: Path, size: int) -> Path:
    folder.mkdir(parents=True)
    (folder / BIG).write_bytes(os.urandom(size))
    (folder / "prodml.json").write_text('{"name": "transfer"}\n')
    write_manifest(folder)
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class SlowRanges:
    """Mixin: each ranged GET of the parallel way waits first (one stream must win)."""

    def _read_range(self, key: str, offset: int, length: int) -> bytes:
        time.sleep(1.0)
        return super()._read_range(key, offset, length)  # type: ignore[misc]


class SlowStream:
    """Mixin: the streamed way waits between chunks (parallel ranges must win)."""

    def _stream_range(self, key: str, offset: int, length: int) -> Iterator[bytes]:
        for chunk in super()._stream_range(key, offset, length):  # type: ignore[misc]
            time.sleep(0.25 * len(chunk) / MB)
            yield chunk


def _choices(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "; the rest" in r.getMessage()]


@pytest.mark.s3
@pytest.mark.parametrize(
    ("mixins", "pull_way"),
    [((SlowRanges,), "the rest by one stream"), ((SlowStream,), "the rest by ranges")],
    ids=["stream-wins", "ranges-win"],
)
def test_s3_big_file_round_trip_takes_the_measured_way(
    s3_server: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    mixins: tuple[type, ...],
    pull_way: str,
) -> None:
    # 5 MiB parts, 2 at a time: a 40 MiB file has a probe stretch of 10 MiB each way and a rest
    config = S3StoreConfig.model_validate(
        s3_server.store_config(multipart_threshold_mb=5, part_size_mb=5, max_concurrency=2)
    )
    store = type("ProbedS3Store", (*mixins, S3Store), {})(config)
    bundle = bundle_with_big_file(tmp_path / "bundle", 40 * MB + 12345)
    caplog.set_level(logging.DEBUG, logger="prodml.stores")
    ref = store.push(bundle, "transfer")
    pulled = store.pull(ref, tmp_path / "pulled")
    assert sha256(pulled / BIG) == sha256(bundle / BIG)
    choices = _choices(caplog)
    assert len(choices) == 1 and pull_way in choices[0], choices
    # the verdict is kept: the next pull of this store goes that way without measuring
    caplog.clear()
    again = store.pull(ref, tmp_path / "again")
    assert sha256(again / BIG) == sha256(bundle / BIG)
    assert _choices(caplog) == []


@pytest.mark.azure
@pytest.mark.parametrize(
    ("mixins", "pull_way"),
    [((SlowRanges,), "the rest by one stream"), ((SlowStream,), "the rest by ranges")],
    ids=["stream-wins", "ranges-win"],
)
def test_azure_big_file_round_trip_takes_the_measured_way(
    azurite_server: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    mixins: tuple[type, ...],
    pull_way: str,
) -> None:
    config = AzureBlobStoreConfig.model_validate(
        azurite_server.store_config(single_put_mb=1, block_size_mb=1, max_concurrency=2)
    )
    store = type("ProbedAzureStore", (*mixins, AzureBlobStore), {})(config)
    bundle = bundle_with_big_file(tmp_path / "bundle", 9 * MB + 777)
    caplog.set_level(logging.DEBUG, logger="prodml.stores")
    ref = store.push(bundle, "transfer")
    pulled = store.pull(ref, tmp_path / "pulled")
    assert sha256(pulled / BIG) == sha256(bundle / BIG)
    assert any(pull_way in c for c in _choices(caplog)), _choices(caplog)


@pytest.mark.s3
def test_a_big_file_changed_in_the_store_is_refused_whichever_way(s3_server: Any, tmp_path: Path) -> None:
    config = S3StoreConfig.model_validate(
        s3_server.store_config(multipart_threshold_mb=5, part_size_mb=5, max_concurrency=2)
    )
    store = S3Store(config)
    bundle = bundle_with_big_file(tmp_path / "bundle", 40 * MB)
    ref = store.push(bundle, "transfer")
    # same size, one byte different, written behind the store's back (past the probe stretches)
    data = bytearray((bundle / BIG).read_bytes())
    data[-1] ^= 0xFF
    key = f"{config.prefix}/transfer/versions/{ref.version}/{BIG}".lstrip("/")
    s3_server.client().put_object(Bucket=config.bucket, Key=key, Body=bytes(data))
    dest = tmp_path / "pulled"
    with pytest.raises(BundleError, match=BIG):
        store.pull(ref, dest)
    assert not dest.exists()
