"""The s3 store against a real S3-compatible server (SeaweedFS on loopback)."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from prodml.core.errors import StoreError
from prodml.core.interfaces import ModelRef
from prodml.plugins.stores.s3 import S3Store, S3StoreConfig
from prodml.testing.services import SeaweedFS
from prodml.testing.stores import MODEL, ModelStoreConformance, RawAccess

pytestmark = [pytest.mark.s3, pytest.mark.slow]


class S3Raw(RawAccess):
    """Writes objects with a plain boto3 client, behind the store's back."""

    def __init__(self, server: SeaweedFS, bucket: str, prefix: str) -> None:
        self.client = server.client()
        self.bucket = bucket
        self.prefix = prefix

    def _key(self, ref: ModelRef, relpath: str) -> str:
        return f"{self.prefix}/{ref.model_name}/versions/{ref.version}/{relpath}"

    def write(self, ref: ModelRef, relpath: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(ref, relpath), Body=data)

    def delete(self, ref: ModelRef, relpath: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(ref, relpath))


class TestS3Store(ModelStoreConformance):
    uri_scheme = "s3://"

    @pytest.fixture
    def backend_config(self, s3_server: SeaweedFS) -> dict:
        # small parts so that the big-file test really goes through multipart
        return s3_server.store_config(multipart_threshold_mb=5, part_size_mb=5, max_concurrency=4)

    @pytest.fixture
    def raw(self, s3_server: SeaweedFS, backend_config: dict) -> RawAccess:
        return S3Raw(s3_server, backend_config["bucket"], backend_config["prefix"])

    def test_big_files_go_up_in_parts(self, store, bundles, s3_server, backend_config) -> None:
        ref = store.push(bundles(big_bytes=12 << 20), MODEL)
        key = f"{backend_config['prefix']}/{MODEL}/versions/{ref.version}/saved_model/1/variables/"
        head = s3_server.client().head_object(
            Bucket=backend_config["bucket"], Key=key + "variables.data-00000-of-00001"
        )
        assert head["ETag"].strip('"').endswith("-3")  # 12 MiB in 5 MiB parts

    def test_the_server_refuses_overwriting_a_stored_object(self, store, bundles, backend_config) -> None:
        """Create-only is enforced by the server (If-None-Match), not only by a client check."""
        from prodml.plugins.stores._base import VersionExists

        ref = store.push(bundles(), MODEL)
        key = f"{backend_config['prefix']}/{MODEL}/versions/{ref.version}/model.keras"
        with pytest.raises(VersionExists):
            store._write(key, b"replacement", overwrite=False)

    def test_create_bucket(self, s3_server: SeaweedFS, bundles) -> None:
        bucket = f"prodml-new-{uuid.uuid4().hex[:8]}"
        config = S3StoreConfig.model_validate(
            {**s3_server.store_config(), "bucket": bucket, "create_bucket": True}
        )
        ref = S3Store(config).push(bundles(), MODEL)
        assert ref.uri.startswith(f"s3://{bucket}/")

    def test_missing_bucket_says_how_to_fix_it(self, s3_server: SeaweedFS, bundles) -> None:
        config = S3StoreConfig.model_validate({**s3_server.store_config(), "bucket": "prodml-no-such-bucket"})
        with pytest.raises(StoreError, match="does not exist") as info:
            S3Store(config).push(bundles(), MODEL)
        assert "create_bucket" in str(info.value)


def test_config_needs_both_keys_or_neither() -> None:
    with pytest.raises(ValidationError, match="both"):
        S3StoreConfig.model_validate({"type": "s3", "bucket": "models", "access_key_id": "AKIA"})
    config = S3StoreConfig.model_validate({"type": "s3", "bucket": "models"})
    assert config.access_key_id is None and config.addressing_style == "auto"
    # what `${env:AWS_ACCESS_KEY_ID:-}` gives when the variable is unset: the credential chain
    config = S3StoreConfig.model_validate(
        {"type": "s3", "bucket": "models", "access_key_id": "", "secret_access_key": ""}
    )
    assert config.access_key_id is None and config.secret_access_key is None


def test_config_masks_credentials() -> None:
    config = S3StoreConfig.model_validate(
        {
            "type": "s3",
            "bucket": "models",
            "access_key_id": "AKIAEXAMPLE",
            "secret_access_key": "s3cr3t-value",
        }
    )
    assert "s3cr3t-value" not in repr(config) and "s3cr3t-value" not in config.model_dump_json()
