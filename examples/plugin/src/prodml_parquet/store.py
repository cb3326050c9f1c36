"""The ``sharedfolder`` store: versions in a shared folder that an S3-compatible gateway serves.

Training writes into a folder (an NFS export, a SeaweedFS/JuiceFS mount, ...) that an S3
gateway also serves as ``s3://<bucket>/<prefix>``: the pipeline writes files, KServe reads
objects. Everything the conformance suite asks of a store is here, on plain files:

* a push copies the verified bundle into a staging folder, verifies the copy and renames it
  to ``<model>/versions/<version>`` in one step (a version appears whole or not at all);
  identical content already stored is returned, not copied again;
* ``latest`` is a JSON pointer replaced by an atomic rename under an exclusive ``flock``
  (a compare-and-swap), and every move is recorded under ``<model>/history/``;
* a pull copies into a staging folder, checks every file and the manifest digest, and only
  then renames it to the destination.

On a cluster, pipeline pods get the gateway's key pair from a Kubernetes Secret
(:meth:`SharedFolderStore.pod_environment`) and KServe reads versions through the gateway
(:meth:`SharedFolderStore.kserve_storage`), exactly like the built-in ``s3`` store.
Written against ``prodml.plugin`` only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr

from prodml.plugin import (
    MANIFEST,
    MOVE_REASONS,
    Backend,
    BundleError,
    ConfigPath,
    KServeStorage,
    LatestMove,
    ModelRef,
    ModelStore,
    ModelVersion,
    PluginConfig,
    SecretEnv,
    StoreError,
    hookimpl,
    manifest_digest,
    new_version_id,
    parse_manifest,
    verify_bundle,
)

#: the variables the gateway's key pair is read from (in pods: from the Secret's keys below)
ACCESS_ENV, SECRET_ENV = "SHARED_FOLDER_ACCESS_KEY_ID", "SHARED_FOLDER_SECRET_ACCESS_KEY"
SECRET_KEYS = {ACCESS_ENV: "access-key-id", SECRET_ENV: "secret-access-key"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERSION = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")


class SharedFolderConfig(PluginConfig):
    """A shared folder that keeps model versions and that an S3-compatible gateway serves."""

    type: Literal["sharedfolder"]
    root: ConfigPath = Field(description="the folder as this machine (or the pipeline pod) mounts it")
    bucket: str = Field(description="the bucket the gateway serves the folder as")
    prefix: str = Field("", description="the folder's path inside the bucket (empty: the bucket's root)")
    endpoint_url: str = Field(description="the gateway's S3 endpoint as pods reach it")
    region: str = Field("us-east-1", description="the region the gateway answers for")


class SharedFolderStore(ModelStore):
    """Model versions in a gateway-served shared folder."""

    config: SharedFolderConfig

    # -- layout ------------------------------------------------------------------------------

    def _model(self, model_name: str) -> Path:
        if not NAME.match(model_name or "") or model_name in (".", ".."):
            raise StoreError(f"invalid model name {model_name!r}: use letters, digits, '.', '_' and '-'")
        return Path(self.config.root) / model_name

    def _version(self, model_name: str, version: str) -> Path:
        if not VERSION.match(version):
            raise StoreError(
                f"{version!r} is not a version id of {model_name!r} (like 20261129T173000Z-0123abcd)"
            )
        return self._model(model_name) / "versions" / version

    def _complete(self, model_name: str, version: str) -> Path | None:
        folder = self._version(model_name, version)
        return folder if (folder / MANIFEST).is_file() else None

    def _ref(self, model_name: str, version: str) -> ModelRef:
        folder = self._version(model_name, version)
        ref = ModelRef(
            model_name=model_name,
            version=version,
            store_type="sharedfolder",
            uri="",
            digest=manifest_digest(folder),
        )
        return ref.model_copy(update={"uri": self.uri(ref)})

    def uri(self, ref: ModelRef) -> str:
        """The version as the gateway serves it."""
        key = "/".join(
            p for p in (self.config.prefix.strip("/"), ref.model_name, "versions", ref.version) if p
        )
        return f"s3://{self.config.bucket}/{key}"

    # -- push ----------------------------------------------------------------------------------

    def push(self, bundle_dir: Path, model_name: str, *, latest: bool = True) -> ModelRef:
        """Store the verified bundle as a new version (or return identical stored content)."""
        model = self._model(model_name)
        verify_bundle(bundle_dir)
        manifest_bytes = (Path(bundle_dir) / MANIFEST).read_bytes()
        digest = manifest_digest(bundle_dir)
        ref = self._find_identical(model_name, digest)
        if ref is None:
            version = new_version_id(bundle_dir)
            self._copy_in(Path(bundle_dir), model, model_name, version, manifest_bytes)
            ref = self._ref(model_name, version)
        if latest and self._latest(model_name) != ref.version:
            self.move_latest(model_name, ref.version, reason="export")
        return ref

    def _find_identical(self, model_name: str, digest: str) -> ModelRef | None:
        for entry in self._complete_versions(model_name):
            if manifest_digest(entry) == digest:
                return self._ref(model_name, entry.name)
        return None

    def _copy_in(self, bundle: Path, model: Path, model_name: str, version: str, manifest: bytes) -> None:
        final = model / "versions" / version
        staging = model / ".staging" / f"{version}-{uuid.uuid4().hex[:8]}"
        staging.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copytree(bundle, staging)
            try:
                verify_bundle(staging)  # the copy, as it will be served
            except BundleError as exc:
                raise BundleError(
                    f"bundle {bundle} changed while it was pushed: {exc.message}; nothing was published"
                ) from None
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(staging, final)  # refuses a non-empty target: versions are never replaced
            except OSError:
                stored = final / MANIFEST
                if stored.is_file() and stored.read_bytes() == manifest:
                    return  # the same bundle, pushed at the same moment by someone else
                if not stored.is_file():
                    raise StoreError(
                        f"version {version} of {model_name!r} is an incomplete version (files without "
                        f"{MANIFEST}) that differs from this bundle; stored versions are never overwritten",
                        hint=f"push again in a second (version ids carry the time), or delete {final}",
                    ) from None
                raise StoreError(
                    f"version {version} of {model_name!r} already exists with other content; "
                    "stored versions are never overwritten",
                    hint="push again in a second (version ids carry the time)",
                ) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # -- read ----------------------------------------------------------------------------------

    def _complete_versions(self, model_name: str) -> list[Path]:
        folder = self._model(model_name) / "versions"
        if not folder.is_dir():
            return []
        found = [e for e in folder.iterdir() if VERSION.match(e.name) and (e / MANIFEST).is_file()]
        return sorted(found, key=lambda e: e.name, reverse=True)

    def _latest(self, model_name: str) -> str | None:
        pointer = self._model(model_name) / "latest"
        try:
            return json.loads(pointer.read_text(encoding="utf-8"))["version"]
        except FileNotFoundError:
            return None

    def resolve(self, model_name: str, version: str = "latest") -> ModelRef:
        """``latest`` from the pointer, or a complete stored version id."""
        if version == "latest":
            found = self._latest(model_name)
            if found is None:
                raise StoreError(f"no version of {model_name!r} is latest in the shared folder")
            version = found
        if self._complete(model_name, version) is None:
            raise StoreError(f"the shared folder has no version {version} of {model_name!r}")
        return self._ref(model_name, version)

    def versions(self, model_name: str) -> list[ModelVersion]:
        """Every complete version, newest first, dated by its id."""
        latest = self._latest(model_name)
        return [
            ModelVersion(
                version=entry.name,
                created_at=datetime.strptime(entry.name[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC),
                size_bytes=sum(p.stat().st_size for p in entry.rglob("*") if p.is_file()),
                latest=entry.name == latest,
            )
            for entry in self._complete_versions(model_name)
        ]

    def pull(self, ref: ModelRef, dest: Path) -> Path:
        """Copy the version out through a staging folder, verified before it is renamed to ``dest``."""
        dest = Path(dest)
        source = self._complete(ref.model_name, ref.version)
        if source is None:
            raise StoreError(f"the shared folder has no version {ref.version} of {ref.model_name!r}")
        if dest.exists():
            if (dest / MANIFEST).is_file() and manifest_digest(dest) == ref.digest:
                verify_bundle(dest)
                return dest
            raise StoreError(f"{dest} exists and holds something else", hint="pull into a new folder")
        # names are checked before anything is written: a forged manifest writes nothing
        parse_manifest((source / MANIFEST).read_text(encoding="utf-8"), source=f"{ref.version}/{MANIFEST}")
        parent = dest.parent if dest.parent.is_dir() else None
        staging = Path(tempfile.mkdtemp(prefix=".prodml-pull-", dir=parent))
        try:
            copy = staging / "bundle"
            shutil.copytree(source, copy)
            verify_bundle(copy)
            if manifest_digest(copy) != ref.digest:
                raise BundleError(
                    f"{ref.model_name} {ref.version}: the stored manifest changed (digest "
                    f"{manifest_digest(copy)[:12]}, expected {ref.digest[:12]})"
                )
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(copy, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return dest

    # -- latest ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, model_name: str) -> Iterator[Path]:
        model = self._model(model_name)
        model.mkdir(parents=True, exist_ok=True)
        with open(model / ".latest.lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield model
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def move_latest(
        self,
        model_name: str,
        version: str,
        *,
        reason: str,
        run_id: str | None = None,
        expect: str | object | None = ModelStore.CURRENT,
    ) -> LatestMove:
        """Compare-and-swap the pointer under a lock, then record the move."""
        if reason not in MOVE_REASONS:
            raise StoreError(f"unknown reason {reason!r} for moving latest: one of {', '.join(MOVE_REASONS)}")
        if self._complete(model_name, version) is None:
            raise StoreError(f"the shared folder has no version {version} of {model_name!r}")
        with self._locked(model_name) as model:
            current = self._latest(model_name)
            if expect is not ModelStore.CURRENT and expect != current:
                raise StoreError(
                    f"latest of {model_name!r} moved meanwhile: it is {current}, not {expect}",
                    hint="look at `prodml versions` and try again",
                )
            move = LatestMove(
                at=datetime.now(UTC),
                model_name=model_name,
                from_version=current,
                to_version=version,
                reason=reason,
                run_id=run_id,
            )
            history = model / "history"
            history.mkdir(exist_ok=True)
            seq = len(list(history.glob("*.json")))
            _write_atomic(history / f"{seq:08d}.json", move.to_json().encode())
            _write_atomic(model / "latest", json.dumps({"version": version}).encode())
        return move

    def latest_history(self, model_name: str) -> list[LatestMove]:
        """Every recorded move, oldest first."""
        history = self._model(model_name) / "history"
        if not history.is_dir():
            return []
        return [LatestMove.model_validate_json(p.read_bytes()) for p in sorted(history.glob("*.json"))]

    # -- cluster capabilities ---------------------------------------------------------------

    def pod_environment(self, secret_name: str) -> list[SecretEnv]:
        """The gateway key pair, from ``secret_name``'s ``access-key-id`` and ``secret-access-key``."""
        return [
            SecretEnv(env=env, secret_name=secret_name, secret_key=key) for env, key in SECRET_KEYS.items()
        ]

    def reachable_from_cluster(self) -> bool:
        """The gateway is addressed as pods reach it (not a loopback address)."""
        return urlparse(self.config.endpoint_url).hostname not in ("localhost", "127.0.0.1", "::1")

    def kserve_storage(
        self, ref: ModelRef, *, endpoint: str | None = None, with_values: bool = False
    ) -> KServeStorage:
        """KServe's S3 Secret for the gateway: the key pair, endpoint and region annotations."""
        address = endpoint or self.config.endpoint_url
        parsed = urlparse(address if "://" in address else f"http://{address}")
        https = "1" if parsed.scheme == "https" else "0"
        keys = {"AWS_ACCESS_KEY_ID": ACCESS_ENV, "AWS_SECRET_ACCESS_KEY": SECRET_ENV}
        values = None
        if with_values:
            values = {key: SecretStr(os.environ[env]) for key, env in keys.items() if os.environ.get(env)}
        return KServeStorage(
            storage_uri=self.uri(ref),
            secret_annotations={
                "serving.kserve.io/s3-region": self.config.region,
                "serving.kserve.io/s3-endpoint": parsed.netloc,
                "serving.kserve.io/s3-usehttps": https,
                "serving.kserve.io/s3-verifyssl": https,
            },
            secret_keys=keys,
            secret_values=values,
        )


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@hookimpl
def prodml_backends() -> list[Backend]:
    return [
        Backend(
            "store",
            "sharedfolder",
            SharedFolderConfig,
            SharedFolderStore,
            description="a shared folder served by an S3 gateway (verified, atomic latest)",
        )
    ]
