"""The ``azure_blob`` store: Azure Blob Storage (and the Azurite emulator).

Files are block blobs written create-only (``If-None-Match: *`` on the single put and on
the block-list commit); every request body carries a transactional MD5 the service checks,
and big files go up as blocks staged in parallel. ``latest`` moves with an ``If-Match`` on
the pointer blob's ETag. A killed push leaves only uncommitted
blocks, which are invisible to readers and which Azure discards after seven days.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from prodml import hookimpl
from prodml.core.config import PluginConfig
from prodml.core.errors import ConfigError, ProdmlError, StoreError
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
from prodml.plugins.stores._cluster_access import is_loopback

log = logging.getLogger("prodml.stores.azure_blob")
MB = 1 << 20
#: Azure allows at most this many blocks per blob
MAX_BLOCKS = 50_000
#: read when the config names no credentials (the Azure SDK and CLI convention)
CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
#: the Secret key KServe's storage initializer reads the account key from (pkg/credentials/azure)
ACCESS_KEY_SECRET_KEY = "AZURE_STORAGE_ACCESS_KEY"
#: azure-identity's EnvironmentCredential (a service principal), for account_url without a key
SERVICE_PRINCIPAL_ENV = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET")


class AzureBlobStoreConfig(PluginConfig):
    """An Azure Blob Storage container (or one in the Azurite emulator).

    Authenticate with ``connection_string``, or with ``account_url`` plus ``credential``
    (an account key or a SAS token); with ``account_url`` alone, azure-identity's
    DefaultAzureCredential is used when it is installed; with neither, the connection string
    in `$AZURE_STORAGE_CONNECTION_STRING`.
    """

    type: Literal["azure_blob"]
    container: str = Field(min_length=3, max_length=63, description="container holding the model versions")
    prefix: str = Field("", description="blob name prefix inside the container, e.g. `models`")
    connection_string: SecretStr | None = Field(
        None, description="storage account connection string (e.g. ${env:AZURE_STORAGE_CONNECTION_STRING})"
    )
    account_url: str | None = Field(
        None,
        description="account endpoint, e.g. https://<account>.blob.core.windows.net (instead of a "
        "connection string)",
    )
    credential: SecretStr | None = Field(
        None, description="account key or SAS token for account_url (e.g. ${env:AZURE_STORAGE_KEY})"
    )
    create_container: bool = Field(
        False, description="create the container on first push when it does not exist"
    )
    max_concurrency: int = Field(8, ge=1, le=64, description="parallel requests per transfer")
    block_size_mb: int = Field(8, ge=1, le=4000, description="block size (MiB) for big files")
    single_put_mb: int = Field(
        16, ge=1, le=5000, description="files smaller than this (MiB) are sent in one request"
    )
    max_attempts: int = Field(
        5, ge=1, le=20, description="attempts per request (5xx, throttling, connection)"
    )
    connect_timeout: float = Field(10, gt=0, description="seconds to wait for a connection")
    read_timeout: float = Field(60, gt=0, description="seconds to wait for a response")
    stale_upload_seconds: float = Field(
        3600,
        ge=0,
        description="a push removes incomplete versions (no manifest) of the same model older than this",
    )

    @field_validator("connection_string", "credential", "account_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # `${env:VAR:-}` gives "" when VAR is unset: treat it as not configured
        return None if value == "" else value

    @model_validator(mode="after")
    def _one_way_to_connect(self) -> AzureBlobStoreConfig:
        # neither is fine: the client then reads $AZURE_STORAGE_CONNECTION_STRING (like boto3's
        # credential chain), which is how a pipeline step gets it from a Kubernetes Secret
        if self.connection_string is not None and (self.account_url or self.credential is not None):
            raise ValueError("set either connection_string or account_url + credential, not both")
        if self.prefix.startswith("/"):
            raise ValueError("prefix must not start with '/'")
        return self


def _is_sas(credential: str) -> bool:
    return "sig=" in credential


def _register_azure_secrets(connection_string: str | None, credential: str | None) -> None:
    """Mask the key and SAS signature inside connection strings and tokens, also URL-encoded."""
    values: list[str] = []
    if connection_string:
        register_secret(connection_string)
        for part in connection_string.split(";"):
            name, _, value = part.partition("=")
            if name.strip().lower() in ("accountkey", "sharedaccesssignature"):
                values.append(value)
    if credential:
        values.append(credential)
    for value in list(values):
        query = urllib.parse.parse_qs(value.lstrip("?"))
        values += query.get("sig", [])
    for value in values:
        for form in {value, urllib.parse.quote(value, safe=""), urllib.parse.unquote(value)}:
            register_secret(form)


def account_name_from_url(url: str) -> str | None:
    """``acct`` from https://acct.blob.core.windows.net or http://127.0.0.1:10000/acct."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if re.fullmatch(r"[\d.]+|localhost|\[.*\]|[0-9a-f:]+", host):
        segment = parts.path.strip("/").split("/")[0]
        return segment or None
    return host.split(".")[0] or None


class AzureBlobStore(ObjectStore):
    """Azure Blob Storage."""

    store_type = "azure_blob"
    config: AzureBlobStoreConfig

    def __init__(self, config: AzureBlobStoreConfig) -> None:
        super().__init__(config)
        _register_azure_secrets(
            config.connection_string.get_secret_value() if config.connection_string else None,
            config.credential.get_secret_value() if config.credential else None,
        )
        self.large_file_bytes = config.single_put_mb * MB
        self.part_bytes = config.block_size_mb * MB
        self.max_parts = MAX_BLOCKS
        self._service: Any = None
        self._container: Any = None

    # -- client ----------------------------------------------------------------------------

    def _build_service(self) -> Any:
        from azure.storage.blob import BlobServiceClient, ExponentialRetry

        c = self.config
        options: dict[str, Any] = {
            # the SDK's default backoff starts at 15 s (then 18, 24, ...); waits of about
            # 2, 2.8, 3.9, 5.6 s ride out a throttling blip without stalling a push for minutes
            "retry_policy": ExponentialRetry(
                initial_backoff=0.5,  # type: ignore[arg-type]  # floats work; the hint says int
                increment_base=1.5,  # type: ignore[arg-type]
                retry_total=c.max_attempts - 1,
                random_jitter_range=0.5,  # type: ignore[arg-type]
            ),
            "connection_timeout": c.connect_timeout,
            "read_timeout": c.read_timeout,
            "max_single_put_size": c.single_put_mb * MB,
            "max_block_size": c.block_size_mb * MB,
            "max_single_get_size": c.single_put_mb * MB,
            "max_chunk_get_size": c.block_size_mb * MB,
            "user_agent": "prodml",
        }
        connection_string = c.connection_string.get_secret_value() if c.connection_string else None
        if connection_string is None and not c.account_url:
            connection_string = os.environ.get(CONNECTION_STRING_ENV) or None
            if connection_string is None:
                raise StoreError(
                    f"no Azure credentials for container {c.container!r}: store.connection_string and "
                    f"store.account_url are unset and ${CONNECTION_STRING_ENV} is empty",
                    hint=f"export {CONNECTION_STRING_ENV}='DefaultEndpointsProtocol=https;AccountName=...;"
                    "AccountKey=...', or set store.account_url + store.credential",
                )
            _register_azure_secrets(connection_string, None)
        if connection_string is not None:
            try:
                return BlobServiceClient.from_connection_string(connection_string, **options)
            except ValueError:
                raise ConfigError(
                    "the Azure Storage connection string is not valid",
                    field="store.connection_string",
                    hint="copy it from the portal (Access keys), or use account_url + credential",
                ) from None
        url = str(c.account_url).rstrip("/")
        credential: Any
        if c.credential is None:
            try:
                from azure.identity import DefaultAzureCredential
            except ImportError:
                raise ConfigError(
                    "store.account_url is set without a credential, and azure-identity is not installed",
                    field="store.credential",
                    hint="set store.credential to an account key or SAS token, or pip install azure-identity",
                ) from None
            credential = DefaultAzureCredential()
        else:
            secret = c.credential.get_secret_value()
            if _is_sas(secret):
                credential = secret.lstrip("?")
            else:
                account = account_name_from_url(url)
                if not account:
                    raise ConfigError(
                        f"cannot tell the storage account name from store.account_url {url!r}",
                        hint="use https://<account>.blob.core.windows.net, or a connection string",
                    )
                credential = {"account_name": account, "account_key": secret}
        return BlobServiceClient(url, credential=credential, **options)

    @property
    def service(self) -> Any:
        if self._service is None:
            self._service = self._build_service()
        return self._service

    @property
    def container(self) -> Any:
        """The ContainerClient, built once per store from the config (never shared)."""
        if self._container is None:
            self._container = self.service.get_container_client(self.config.container)
        return self._container

    def account_url(self) -> str:
        """The account endpoint without any query string (a SAS never leaves the client)."""
        parts = urllib.parse.urlsplit(self.service.url)
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))

    def describe(self) -> str:
        return f"azure container {self.config.container!r} at {self.account_url()}"

    def preflight(self, *, offline: bool) -> list[str]:
        """Credentials are configured (found without the network) and the container answers."""
        from prodml.core.plugins import module_available

        c = self.config
        if c.account_url and c.credential is None and not module_available("azure.identity"):
            return [
                "store.account_url is set without store.credential, and azure-identity is not "
                "installed (set store.credential, or pip install azure-identity)"
            ]
        if c.connection_string is None and not c.account_url and not os.environ.get(CONNECTION_STRING_ENV):
            return [
                f"no Azure credentials: store.connection_string and store.account_url are unset and "
                f"${CONNECTION_STRING_ENV} is empty (export it, or set account_url + credential)"
            ]
        if offline:
            return []
        from azure.core.exceptions import ResourceNotFoundError

        # one attempt with short timeouts: a pre-flight must not wait out the retry budget
        probe = AzureBlobStore(
            c.model_copy(update={"max_attempts": 1, "connect_timeout": 3, "read_timeout": 10})
        )
        try:
            with probe._translate("reach"):
                try:
                    probe.container.get_container_properties()
                except ResourceNotFoundError:
                    if not c.create_container:
                        raise
        except ProdmlError as exc:
            return [exc.message if exc.hint is None else f"{exc.message} ({exc.hint})"]
        return []

    def _location(self, key: str) -> str:
        return f"{self.account_url()}/{self.config.container}/{urllib.parse.quote(key)}"

    # -- cluster capabilities -------------------------------------------------------------

    def pod_environment(self, secret_name: str) -> list[SecretEnv]:
        """The connection string (or, with ``account_url``, a service principal) from ``secret_name``."""
        if self.config.account_url:
            # the pipeline drops store.credential: DefaultAzureCredential reads these instead
            keys: tuple[str, ...] = SERVICE_PRINCIPAL_ENV
        else:
            keys = (CONNECTION_STRING_ENV,)
        return [SecretEnv(env=key, secret_name=secret_name, secret_key=key) for key in keys]

    def reachable_from_cluster(self) -> bool:
        """False for a loopback account endpoint (Azurite on this machine)."""
        return not is_loopback(self.account_url())

    def kserve_storage(
        self, ref: ModelRef, *, endpoint: str | None = None, with_values: bool = False
    ) -> KServeStorage:
        """KServe's Azure Secret: the account key, taken from the connection string or credential."""
        values = None
        if with_values:
            key = self._account_key()
            values = {ACCESS_KEY_SECRET_KEY: SecretStr(key)} if key else {}
        return KServeStorage(
            storage_uri=self.uri(ref),
            secret_keys={ACCESS_KEY_SECRET_KEY: ACCESS_KEY_SECRET_KEY},
            secret_values=values,
        )

    def _account_key(self) -> str | None:
        """The account key: $AZURE_STORAGE_ACCESS_KEY, store.credential, or a connection string's."""
        c = self.config
        if os.environ.get(ACCESS_KEY_SECRET_KEY):
            return os.environ[ACCESS_KEY_SECRET_KEY]
        if c.credential is not None and not _is_sas(c.credential.get_secret_value()):
            return c.credential.get_secret_value()
        text = c.connection_string.get_secret_value() if c.connection_string else None
        text = text or (None if c.account_url else os.environ.get(CONNECTION_STRING_ENV))
        for part in (text or "").split(";"):
            name, _, value = part.partition("=")
            if name.strip().lower() == "accountkey" and value:
                return value
        return None

    # -- errors -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )

        where = self.describe()
        try:
            yield
        except ClientAuthenticationError as exc:
            raise store_error(
                f"cannot {action} {where}: access denied "
                f"({getattr(exc, 'error_code', None) or exc.status_code})",
                hint="check store.connection_string / store.credential (account key, or SAS expiry and "
                "permissions)",
            ) from None
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                raise store_error(
                    f"cannot {action} {where}: the container does not exist",
                    hint="create it, or set `create_container: true` in the store section",
                ) from None
            raise store_error(f"cannot {action} {where}: not found ({exc.error_code})") from None
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise store_error(
                f"cannot {action} {where}: the service does not answer ({type(exc).__name__})",
                hint="is the storage endpoint reachable (Azurite running?) and the account URL right?",
            ) from None
        except HttpResponseError as exc:
            status = exc.status_code
            if status == 403:
                raise store_error(
                    f"cannot {action} {where}: access denied ({exc.error_code or status})",
                    hint="check the credential's permissions (a SAS needs read, write, list, delete)",
                ) from None
            detail = f"{status} {exc.error_code or exc.reason or ''}".strip()
            if status and status >= 500:
                raise store_error(
                    f"cannot {action} {where}: the service failed with {detail} after "
                    f"{self.config.max_attempts} attempts",
                    hint="the service is overloaded or failing; try again later",
                ) from None
            raise store_error(f"cannot {action} {where}: {detail}") from None

    # -- primitives ---------------------------------------------------------------------------

    def _prepare(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        if self.config.create_container:
            with contextlib.suppress(ResourceExistsError):
                self.container.create_container()
                log.info("created container %s", self.config.container)
        # one cheap request first: a wrong key fails here once, not on every block
        # (listing works with a container SAS, unlike reading container properties)
        pages = self.container.list_blobs(name_starts_with=self.prefix or None, results_per_page=1).by_page()
        next(pages, None)

    def _read(self, key: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.container.get_blob_client(key).download_blob().readall()
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                raise
            return None

    def _write(self, key: str, data: bytes, *, overwrite: bool) -> None:
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

        try:
            self.container.get_blob_client(key).upload_blob(
                data, length=len(data), overwrite=overwrite, validate_content=True, max_concurrency=1
            )
        except (ResourceExistsError, ResourceModifiedError):
            if overwrite:
                raise
            raise VersionExists(key) from None

    def _read_tagged(self, key: str) -> tuple[bytes, str] | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            downloader = self.container.get_blob_client(key).download_blob()
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                raise
            return None
        return downloader.readall(), downloader.properties.etag

    def _write_if(self, key: str, data: bytes, *, tag: str | None) -> None:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

        blob = self.container.get_blob_client(key)
        try:
            if tag is None:
                blob.upload_blob(data, length=len(data), overwrite=False, validate_content=True)
            else:
                blob.upload_blob(
                    data,
                    length=len(data),
                    overwrite=True,
                    validate_content=True,
                    etag=tag,
                    match_condition=MatchConditions.IfNotModified,
                )
        except (ResourceExistsError, ResourceModifiedError):
            raise WriteConflict(key) from None
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                raise
            raise WriteConflict(key) from None

    def _begin_upload(self, key: str) -> Any:
        return self.container.get_blob_client(key)

    def _upload_part(self, upload: Any, number: int, data: bytes) -> Any:
        # block ids must all have the same length within a blob
        block_id = base64.b64encode(f"prodml-{number:08d}".encode()).decode()
        upload.stage_block(block_id, data, length=len(data), validate_content=True)
        return block_id

    def _complete_upload(self, upload: Any, parts: list[Any]) -> None:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
        from azure.storage.blob import BlobBlock

        try:
            upload.commit_block_list(
                [BlobBlock(block_id=b) for b in parts], match_condition=MatchConditions.IfMissing
            )
        except (ResourceExistsError, ResourceModifiedError):
            raise VersionExists(upload.blob_name) from None

    # an uncommitted block list cannot be deleted; Azure drops it after seven days and no
    # reader ever sees it, so _abort_upload has nothing to do

    def _read_range(self, key: str, offset: int, length: int) -> bytes:
        return self.container.get_blob_client(key).download_blob(offset=offset, length=length).readall()

    def _stream_range(self, key: str, offset: int, length: int) -> Iterator[bytes]:
        # one request after another (chunks of block_size_mb), as a plain download_blob does
        downloader = self.container.get_blob_client(key).download_blob(
            offset=offset, length=length, max_concurrency=1
        )
        yield from downloader.chunks()

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        for blob in self.container.list_blobs(name_starts_with=prefix):
            yield ObjectInfo(key=blob.name, size=int(blob.size), modified=blob.last_modified)

    def _delete(self, keys: list[str]) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        for key in keys:
            with contextlib.suppress(ResourceNotFoundError):
                self.container.delete_blob(key)


@hookimpl
def prodml_backends() -> list[Backend]:
    return [
        Backend(
            "store",
            "azure_blob",
            AzureBlobStoreConfig,
            AzureBlobStore,
            requires=("azure.storage.blob",),
            extra="azure",
            description="Azure Blob Storage (or Azurite)",
            aliases=("azure", "blob", "azurite", "abfs"),
        )
    ]
