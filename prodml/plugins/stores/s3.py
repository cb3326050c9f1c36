"""The ``s3`` store: AWS S3, MinIO, SeaweedFS or any S3-compatible object store.

Uploads are create-only (``If-None-Match: *`` on PutObject and CompleteMultipartUpload),
``latest`` moves with ``If-Match`` on the pointer's ETag,
and carry ``Content-MD5`` on every request, so the server rejects bytes damaged in
transit; big files go up in parallel multipart parts. botocore's checksum settings are
pinned to ``when_required`` because boto3 >= 1.36 otherwise adds CRC headers that several
S3-compatible servers reject.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from prodml import hookimpl
from prodml.core.config import PluginConfig
from prodml.core.errors import ProdmlError, StoreError
from prodml.core.interfaces import KServeStorage, ModelRef, SecretEnv
from prodml.core.logs import register_secret
from prodml.core.plugins import Backend
from prodml.plugins.stores._base import (
    ObjectInfo,
    ObjectStore,
    VersionExists,
    WriteConflict,
    store_error,
)
from prodml.plugins.stores._cluster_access import is_loopback, s3_secret_annotations

log = logging.getLogger("prodml.stores.s3")
MB = 1 << 20
#: where else boto3's credential chain looks (profiles, web identity, container roles)
_CHAIN_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
#: S3 allows at most this many parts per multipart upload
MAX_PARTS = 10_000
#: a streamed download is read (then hashed and written) in pieces of this size: 1 MiB
#: pieces are still in the CPU's cache when the hash and the write touch them (2 MiB and
#: 8 MiB reads cost more CPU per byte here)
STREAM_CHUNK = 1 * MB
DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden", "InvalidToken"}
CONFLICT = {"PreconditionFailed", "ConditionalRequestConflict", "412"}
#: the variables boto3 reads credentials from; also the keys of KServe's S3 Secret
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


class S3StoreConfig(PluginConfig):
    """An S3 bucket: AWS S3, MinIO, SeaweedFS or any S3-compatible server."""

    type: Literal["s3"]
    bucket: str = Field(min_length=3, max_length=63, description="bucket holding the model versions")
    prefix: str = Field("", description="key prefix inside the bucket, e.g. `models` (no leading slash)")
    endpoint_url: str | None = Field(
        None, description="URL of an S3-compatible server such as MinIO (`http://minio:9000`); empty for AWS"
    )
    region: str | None = Field(None, description="region name (AWS; MinIO accepts any, e.g. us-east-1)")
    access_key_id: SecretStr | None = Field(
        None, description="access key; when absent, boto3's credential chain (env vars, profile, IAM role)"
    )
    secret_access_key: SecretStr | None = Field(None, description="secret key belonging to access_key_id")
    session_token: SecretStr | None = Field(None, description="session token for temporary credentials")
    create_bucket: bool = Field(False, description="create the bucket on first push when it does not exist")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="`path` for MinIO and most S3-compatible servers; `virtual` for AWS"
    )
    max_concurrency: int = Field(8, ge=1, le=64, description="parallel requests per transfer")
    multipart_threshold_mb: int = Field(
        16, ge=5, description="files at least this big (MiB) are sent in parallel multipart parts"
    )
    part_size_mb: int = Field(16, ge=5, le=5120, description="multipart part size (MiB)")
    max_attempts: int = Field(
        5, ge=1, le=20, description="attempts per request (botocore standard retry mode: 5xx, throttling)"
    )
    connect_timeout: float = Field(10, gt=0, description="seconds to wait for a connection")
    read_timeout: float = Field(60, gt=0, description="seconds to wait for a response")
    stale_upload_seconds: float = Field(
        3600,
        ge=0,
        description="a push aborts unfinished multipart uploads and removes incomplete versions of the "
        "same model older than this (left by killed pushes)",
    )

    @field_validator(
        "access_key_id", "secret_access_key", "session_token", "endpoint_url", "region", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # `${env:VAR:-}` gives "" when VAR is unset: fall back to boto3's credential chain
        return None if value == "" else value

    @model_validator(mode="after")
    def _pair(self) -> S3StoreConfig:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set both access_key_id and secret_access_key, or neither (credential chain)")
        if self.prefix.startswith("/"):
            raise ValueError("prefix must not start with '/'")
        return self


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


class S3Store(ObjectStore):
    """S3, MinIO or any S3-compatible store."""

    store_type = "s3"
    config: S3StoreConfig

    def __init__(self, config: S3StoreConfig) -> None:
        super().__init__(config)
        self.large_file_bytes = config.multipart_threshold_mb * MB
        self.part_bytes = config.part_size_mb * MB
        self.max_parts = MAX_PARTS
        self._client: Any = None
        self._data_client: Any = None

    def describe(self) -> str:
        return f"s3 bucket {self.config.bucket!r} at {self.config.endpoint_url or 'AWS S3'}"

    def preflight(self, *, offline: bool) -> list[str]:
        """Credentials resolve (without the network when ``offline``) and the bucket answers."""
        problem = self._credentials_problem(offline)
        if problem is None and not offline:
            problem = self._reach_problem()
        return [problem] if problem else []

    def _credentials_problem(self, offline: bool) -> str | None:
        c = self.config
        if c.access_key_id is not None or (
            os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")
        ):
            return None
        missing = (
            "no S3 credentials: store.access_key_id/secret_access_key are unset, and so are "
            "$AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY"
        )
        elsewhere = any(os.environ.get(name) for name in _CHAIN_ENV) or any(
            Path(p).expanduser().is_file() for p in ("~/.aws/credentials", "~/.aws/config")
        )
        if not elsewhere and c.endpoint_url:
            # a profile-less S3-compatible server: nothing else in boto3's chain applies
            # (instance roles are AWS credentials), so no need to import boto3 to know
            return f"{missing}, and no AWS profile exists"
        if offline and not elsewhere:
            return None  # only an instance role is left, and asking for it needs the network
        import botocore.session

        try:
            session = botocore.session.Session()
            if offline or c.endpoint_url:
                session.get_component("credential_provider").remove("iam-role")
            found = session.get_credentials()
        except Exception as exc:  # a broken profile is reported, not raised
            return f"the AWS credential chain failed: {type(exc).__name__}: {exc}"
        return None if found is not None else f"{missing}, and boto3's credential chain found none"

    def _reach_problem(self) -> str | None:
        from botocore.exceptions import ClientError

        # one attempt with short timeouts: a pre-flight must not wait out the retry budget
        probe = S3Store(
            self.config.model_copy(update={"max_attempts": 1, "connect_timeout": 3, "read_timeout": 10})
        )
        try:
            with probe._translate("reach"):
                try:
                    probe.client.head_bucket(Bucket=self.config.bucket)
                except ClientError as exc:
                    missing = probe._code(exc) in ("NoSuchBucket", "404", "NotFound")
                    if not (missing and self.config.create_bucket):
                        raise
        except ProdmlError as exc:
            return exc.message if exc.hint is None else f"{exc.message} ({exc.hint})"
        return None

    @property
    def client(self) -> Any:
        """The boto3 S3 client, built once per store from the config (never shared)."""
        if self._client is None:
            self._client = self._build_client()
        return self._client

    @property
    def data_client(self) -> Any:
        """A second client for requests whose body carries its own signed ``Content-MD5``.

        Over plain HTTP botocore otherwise puts the body's SHA-256 into the signature:
        one more pass over every byte here and another on the server, which checks it (on
        a two-core machine running SeaweedFS that was a fifth of a push's CPU). The
        Content-MD5 header is itself signed and the server refuses a body that does not
        match it, so the body stays tied to the signature; every other request keeps
        botocore's default.
        """
        if self._data_client is None:
            self._data_client = self._build_client(payload_signing=False)
        return self._data_client

    def _build_client(self, *, payload_signing: bool | None = None) -> Any:
        import boto3
        from botocore.config import Config

        c = self.config
        session = boto3.session.Session(
            aws_access_key_id=c.access_key_id.get_secret_value() if c.access_key_id else None,
            aws_secret_access_key=c.secret_access_key.get_secret_value() if c.secret_access_key else None,
            aws_session_token=c.session_token.get_secret_value() if c.session_token else None,
            region_name=c.region,
        )
        # credentials from the chain (env, profile) must be masked in wire logs as well
        credentials = session.get_credentials()
        if credentials is not None:
            frozen = credentials.get_frozen_credentials()
            for value in (frozen.access_key, frozen.secret_key, frozen.token):
                register_secret(value)
        botocore_config = Config(
            region_name=c.region,
            retries={"mode": "standard", "total_max_attempts": c.max_attempts},
            s3={"addressing_style": c.addressing_style}
            if payload_signing is None
            else {"addressing_style": c.addressing_style, "payload_signing_enabled": payload_signing},
            connect_timeout=c.connect_timeout,
            read_timeout=c.read_timeout,
            max_pool_connections=c.max_concurrency + 4,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            user_agent_extra="prodml",
        )
        return session.client("s3", endpoint_url=c.endpoint_url or None, config=botocore_config)

    def _location(self, key: str) -> str:
        return f"s3://{self.config.bucket}/{key}"

    # -- cluster capabilities -------------------------------------------------------------

    def pod_environment(self, secret_name: str) -> list[SecretEnv]:
        """boto3's credential variables, from ``secret_name`` (keys named like the variables)."""
        return [SecretEnv(env=key, secret_name=secret_name, secret_key=key) for key in CREDENTIAL_ENV]

    def reachable_from_cluster(self) -> bool:
        """False when ``endpoint_url`` is a loopback address (AWS S3 itself is reachable)."""
        return not (self.config.endpoint_url and is_loopback(self.config.endpoint_url))

    def kserve_storage(
        self, ref: ModelRef, *, endpoint: str | None = None, with_values: bool = False
    ) -> KServeStorage:
        """KServe's S3 Secret: the access key pair, and endpoint/region annotations."""
        values = None
        if with_values:
            c = self.config
            found = {
                "AWS_ACCESS_KEY_ID": c.access_key_id.get_secret_value() if c.access_key_id else None,
                "AWS_SECRET_ACCESS_KEY": c.secret_access_key.get_secret_value()
                if c.secret_access_key
                else None,
            }
            values = {
                key: SecretStr(found[key] or os.environ[key])
                for key in CREDENTIAL_ENV
                if found[key] or os.environ.get(key)
            }
        return KServeStorage(
            storage_uri=self.uri(ref),
            secret_annotations=s3_secret_annotations(
                endpoint or self.config.endpoint_url, self.config.region
            ),
            secret_keys={key: key for key in CREDENTIAL_ENV},
            secret_values=values,
        )

    # -- errors ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        where = self.describe()
        try:
            yield
        except ClientError as exc:
            raise self._client_error(exc, action) from None
        except (NoCredentialsError, PartialCredentialsError):
            raise store_error(
                f"cannot {action} {where}: no S3 credentials found",
                hint="set store.access_key_id/secret_access_key (e.g. ${env:AWS_ACCESS_KEY_ID}), "
                "or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or an AWS profile",
            ) from None
        except (ConnectionError, HTTPClientError) as exc:
            raise store_error(
                f"cannot {action} {where}: the server does not answer ({type(exc).__name__})",
                hint=f"is the S3 server running and is store.endpoint_url right? ({self.config.endpoint_url})"
                if self.config.endpoint_url
                else "check the network and store.region",
            ) from None
        except BotoCoreError as exc:
            raise store_error(f"cannot {action} {where}: {exc}") from None

    def _client_error(self, exc: Any, action: str) -> StoreError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        attempts = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
        where = self.describe()
        if code in DENIED or status == 403:
            return store_error(
                f"cannot {action} {where}: access denied ({code or status})",
                hint="check store.access_key_id / secret_access_key (or the AWS credential chain) and "
                "the bucket policy",
            )
        if code == "NoSuchBucket" or (status == 404 and exc.operation_name == "HeadBucket"):
            return store_error(
                f"cannot {action} {where}: the bucket does not exist",
                hint="create it, or set `create_bucket: true` in the store section",
            )
        if status and status >= 500:
            return store_error(
                f"cannot {action} {where}: the server failed with {status} {code} after "
                f"{attempts + 1} attempts",
                hint="the server is overloaded or failing; try again later (store.max_attempts sets retries)",
            )
        message = error.get("Message") or ""
        return store_error(f"cannot {action} {where}: {code or status} {message}".rstrip())

    @staticmethod
    def _code(exc: Any) -> str:
        error = exc.response.get("Error", {})
        return str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))

    # -- primitives ---------------------------------------------------------------------

    def _prepare(self) -> None:
        from botocore.exceptions import ClientError

        c = self.config
        if c.create_bucket:
            kwargs: dict[str, Any] = {"Bucket": c.bucket}
            if c.region and c.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": c.region}
            try:
                self.client.create_bucket(**kwargs)
                log.info("created bucket %s", c.bucket)
            except ClientError as exc:
                if self._code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
        # one cheap request first: wrong credentials fail here once, not on every part
        self.client.head_bucket(Bucket=c.bucket)

    def _read(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.config.bucket, Key=key)
        except ClientError as exc:
            if self._code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        return response["Body"].read()

    def _write(self, key: str, data: bytes, *, overwrite: bool) -> None:
        from botocore.exceptions import ClientError

        extra = {} if overwrite else {"IfNoneMatch": "*"}
        try:
            self.data_client.put_object(
                Bucket=self.config.bucket,
                Key=key,
                Body=data,
                ContentMD5=_b64(hashlib.md5(data).digest()),
                **extra,
            )
        except ClientError as exc:
            if not overwrite and self._code(exc) in CONFLICT:
                raise VersionExists(key) from None
            raise

    def _read_tagged(self, key: str) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.config.bucket, Key=key)
        except ClientError as exc:
            if self._code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        return response["Body"].read(), response["ETag"]

    def _write_if(self, key: str, data: bytes, *, tag: str | None) -> None:
        from botocore.exceptions import ClientError

        condition = {"IfNoneMatch": "*"} if tag is None else {"IfMatch": tag}
        try:
            self.client.put_object(
                Bucket=self.config.bucket,
                Key=key,
                Body=data,
                ContentMD5=_b64(hashlib.md5(data).digest()),
                **condition,
            )
        except ClientError as exc:
            # AWS answers If-Match on a missing key with 404, others with 412
            if self._code(exc) in CONFLICT | {"NoSuchKey", "404", "NotFound"}:
                raise WriteConflict(key) from None
            raise

    def _begin_upload(self, key: str) -> Any:
        upload = self.client.create_multipart_upload(Bucket=self.config.bucket, Key=key)
        return {"key": key, "id": upload["UploadId"]}

    def _upload_part(self, upload: Any, number: int, data: bytes) -> Any:
        response = self.data_client.upload_part(
            Bucket=self.config.bucket,
            Key=upload["key"],
            UploadId=upload["id"],
            PartNumber=number,
            Body=data,
            ContentMD5=_b64(hashlib.md5(data).digest()),  # the server refuses damaged parts
        )
        return {"PartNumber": number, "ETag": response["ETag"]}

    def _complete_upload(self, upload: Any, parts: list[Any]) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.complete_multipart_upload(
                Bucket=self.config.bucket,
                Key=upload["key"],
                UploadId=upload["id"],
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
        except ClientError as exc:
            if self._code(exc) in CONFLICT:
                raise VersionExists(upload["key"]) from None
            raise

    def _abort_upload(self, upload: Any) -> None:
        self.client.abort_multipart_upload(
            Bucket=self.config.bucket, Key=upload["key"], UploadId=upload["id"]
        )

    def _read_range(self, key: str, offset: int, length: int) -> bytes:
        end = offset + length - 1
        response = self.client.get_object(Bucket=self.config.bucket, Key=key, Range=f"bytes={offset}-{end}")
        return response["Body"].read()

    def _stream_range(self, key: str, offset: int, length: int) -> Iterator[bytes]:
        end = offset + length - 1
        response = self.client.get_object(Bucket=self.config.bucket, Key=key, Range=f"bytes={offset}-{end}")
        body = response["Body"]
        try:
            # botocore's StreamingBody checks the length against Content-Length at the end
            while chunk := body.read(STREAM_CHUNK):
                yield chunk
        finally:
            body.close()

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.config.bucket, Prefix=prefix):
            for item in page.get("Contents", ()):
                yield ObjectInfo(key=item["Key"], size=int(item["Size"]), modified=item.get("LastModified"))

    def _delete(self, keys: list[str]) -> None:
        for key in keys:
            self.client.delete_object(Bucket=self.config.bucket, Key=key)

    def _abort_stale_uploads(self, prefix: str, older_than: datetime) -> None:
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.config.bucket, Prefix=prefix):
            for upload in page.get("Uploads", ()):
                initiated = upload.get("Initiated")
                if initiated is not None and initiated > older_than:
                    continue  # may belong to a push running right now
                log.info("aborting unfinished multipart upload of %s (interrupted push)", upload["Key"])
                self.client.abort_multipart_upload(
                    Bucket=self.config.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )


@hookimpl
def prodml_backends() -> list[Backend]:
    return [
        Backend(
            "store",
            "s3",
            S3StoreConfig,
            S3Store,
            requires=("boto3",),
            extra="s3",
            description="S3, MinIO or any S3-compatible store",
            aliases=("minio", "aws", "seaweedfs"),
        )
    ]
