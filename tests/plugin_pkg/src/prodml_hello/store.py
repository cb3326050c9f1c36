"""The ``hellostore`` store: versions in a folder that an S3-compatible gateway serves as a bucket.

A third-party store that a cluster can use exactly like the built-in ``s3`` one, through the
store capabilities alone: pipeline pods get its credentials from a Kubernetes Secret
(``pod_environment``), and KServe reads versions through the gateway (``kserve_storage``).
Written against ``prodml.plugin`` only.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr

from prodml.plugin import (
    Backend,
    ConfigPath,
    KServeStorage,
    ModelRef,
    ModelStore,
    ModelVersion,
    PluginConfig,
    SecretEnv,
    StoreError,
    hookimpl,
    manifest_digest,
    new_version_id,
    verify_bundle,
)

#: the variables this store's gateway client reads its key pair from
ACCESS_ENV, SECRET_ENV = "HELLO_ACCESS_KEY", "HELLO_SECRET_KEY"


class HelloStoreConfig(PluginConfig):
    """A folder served as an S3 bucket by a gateway (e.g. a filer mount) that pods reach."""

    type: Literal["hellostore"]
    root: ConfigPath = Field(description="the folder the gateway serves")
    bucket: str = Field(description="the bucket name the gateway gives the folder")
    endpoint_url: str = Field(description="the gateway's S3 endpoint as pods reach it")


class HelloStore(ModelStore):
    """Versions in a gateway-served folder."""

    config: HelloStoreConfig

    def _model(self, model_name: str) -> Path:
        return Path(self.config.root) / model_name

    def push(self, bundle_dir: Path, model_name: str) -> ModelRef:
        """Copy the verified bundle in as a new version, then move ``latest``."""
        verify_bundle(bundle_dir)
        version = new_version_id(bundle_dir)
        target = self._model(model_name) / "versions" / version
        staging = self._model(model_name) / f".staging-{uuid.uuid4().hex[:8]}"
        shutil.copytree(bundle_dir, staging)
        verify_bundle(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
        pointer = self._model(model_name) / "latest"
        pointer.write_text(json.dumps({"version": version}), encoding="utf-8")
        return self._ref(model_name, version)

    def _ref(self, model_name: str, version: str) -> ModelRef:
        folder = self._model(model_name) / "versions" / version
        digest = manifest_digest(folder) if folder.is_dir() else ""
        ref = ModelRef(model_name=model_name, version=version, store_type="hellostore", uri="", digest=digest)
        return ref.model_copy(update={"uri": self.uri(ref)})

    def pull(self, ref: ModelRef, dest: Path) -> Path:
        """Copy the version out and verify it."""
        source = self._model(ref.model_name) / "versions" / ref.version
        if not source.is_dir():
            raise StoreError(f"hellostore has no version {ref.version} of {ref.model_name!r}")
        shutil.copytree(source, dest)
        verify_bundle(dest)
        return Path(dest)

    def resolve(self, model_name: str, version: str = "latest") -> ModelRef:
        """``latest`` from the pointer, or a stored version id."""
        if version == "latest":
            pointer = self._model(model_name) / "latest"
            if not pointer.is_file():
                raise StoreError(f"hellostore has no versions of {model_name!r}")
            version = json.loads(pointer.read_text(encoding="utf-8"))["version"]
        if not (self._model(model_name) / "versions" / version).is_dir():
            raise StoreError(f"hellostore has no version {version} of {model_name!r}")
        return self._ref(model_name, version)

    def versions(self, model_name: str) -> list[ModelVersion]:
        """Every stored version, newest first."""
        folder = self._model(model_name) / "versions"
        if not folder.is_dir():
            return []
        latest = self.resolve(model_name).version if (self._model(model_name) / "latest").is_file() else None
        found = []
        for entry in sorted(folder.iterdir(), reverse=True):
            size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
            created = datetime.strptime(entry.name.split("-")[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            found.append(
                ModelVersion(
                    version=entry.name, created_at=created, size_bytes=size, latest=entry.name == latest
                )
            )
        return found

    def uri(self, ref: ModelRef) -> str:
        """The version as the gateway serves it."""
        return f"s3://{self.config.bucket}/{ref.model_name}/versions/{ref.version}"

    # -- cluster capabilities ---------------------------------------------------------------

    def pod_environment(self, secret_name: str) -> list[SecretEnv]:
        """The gateway key pair, from ``secret_name``."""
        return [
            SecretEnv(env=ACCESS_ENV, secret_name=secret_name, secret_key="access-key"),
            SecretEnv(env=SECRET_ENV, secret_name=secret_name, secret_key="secret-key"),
        ]

    def reachable_from_cluster(self) -> bool:
        """The gateway is addressed as pods reach it."""
        return urlparse(self.config.endpoint_url).hostname not in ("localhost", "127.0.0.1", "::1")

    def kserve_storage(
        self, ref: ModelRef, *, endpoint: str | None = None, with_values: bool = False
    ) -> KServeStorage:
        """KServe's S3 Secret for the gateway: the key pair, endpoint and region annotations."""
        parsed = urlparse(endpoint or self.config.endpoint_url)
        https = "1" if parsed.scheme == "https" else "0"
        values = None
        if with_values:
            values = {
                key: SecretStr(os.environ[env])
                for key, env in (("AWS_ACCESS_KEY_ID", ACCESS_ENV), ("AWS_SECRET_ACCESS_KEY", SECRET_ENV))
                if os.environ.get(env)
            }
        return KServeStorage(
            storage_uri=self.uri(ref),
            secret_annotations={
                "serving.kserve.io/s3-region": "us-east-1",
                "serving.kserve.io/s3-endpoint": parsed.netloc,
                "serving.kserve.io/s3-usehttps": https,
                "serving.kserve.io/s3-verifyssl": https,
            },
            secret_keys={"AWS_ACCESS_KEY_ID": ACCESS_ENV, "AWS_SECRET_ACCESS_KEY": SECRET_ENV},
            secret_values=values,
        )


@hookimpl
def prodml_backends() -> list[Backend]:
    return [Backend("store", "hellostore", HelloStoreConfig, HelloStore, description="gateway-served folder")]
