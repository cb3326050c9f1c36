"""The ``local`` store: model versions in a folder on this machine (the quickstart default).

A push copies the bundle into a staging folder under the model's folder, verifies the copy
against its manifest and renames it to ``versions/<version>`` in one step, so a version
appears whole or not at all; ``latest`` is replaced atomically after that. Moving ``latest``
is a compare-and-swap under an exclusive ``flock`` on ``<model>/.latest.lock`` (the entity tag
is the pointer's sha256), completed by an atomic rename, so readers never see a partial
pointer and two movers never both win.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import Field

from prodml import hookimpl
from prodml.core.bundle import MANIFEST, verify_bundle
from prodml.core.config import ConfigPath, PluginConfig
from prodml.core.errors import BundleError, StoreError
from prodml.core.interfaces import KServeStorage, ModelRef, SecretEnv
from prodml.core.plugins import Backend
from prodml.plugins.stores._base import (
    ObjectInfo,
    ObjectStore,
    VersionExists,
    WriteConflict,
    join_key,
)
from prodml.plugins.stores._progress import TransferProgress

STAGING = ".staging"
#: staging folders of pushes that were killed are removed after this long
STALE_STAGING_SECONDS = 3600


class LocalStoreConfig(PluginConfig):
    """A folder on this machine (or a mounted volume) that keeps model versions."""

    type: Literal["local"]
    root: ConfigPath = Field(
        description="folder holding <model>/versions/<version>/ and <model>/latest (created on first push)"
    )


class LocalStore(ObjectStore):
    """Model versions in a local folder."""

    store_type = "local"

    def __init__(self, config: LocalStoreConfig) -> None:
        super().__init__(config)
        self.root = Path(config.root)

    @property
    def prefix(self) -> str:
        return ""

    @property
    def concurrency(self) -> int:
        return 4

    def describe(self) -> str:
        return f"local store {self.root}"

    def preflight(self, *, offline: bool) -> list[str]:
        """The root folder exists or can be created, and is writable."""
        from prodml.runner.preflight import unwritable_dir

        problem = unwritable_dir(self.root, "the store folder", field="store.root")
        return [problem] if problem else []

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/")) if key else self.root

    def _location(self, key: str) -> str:
        return self._path(key).resolve().as_uri()

    # -- cluster capabilities: a folder on this machine ------------------------------------

    def pod_environment(self, secret_name: str) -> list[SecretEnv]:
        """None: the folder needs no credential (but a pod writes into its own filesystem)."""
        return []

    def reachable_from_cluster(self) -> bool:
        """Never: pods see their own filesystem, not this machine's folder."""
        return False

    def kserve_storage(
        self, ref: ModelRef, *, endpoint: str | None = None, with_values: bool = False
    ) -> KServeStorage:
        """A ``file://`` URI and no Secret (usable only where the same folder is mounted)."""
        return KServeStorage(storage_uri=self.uri(ref), secret_values={} if with_values else None)

    @contextlib.contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:  # permissions, a full disk, a file where a folder should be
            raise StoreError(
                f"cannot {action} {self.describe()}: {exc.strerror or exc}"
                + (f": {exc.filename}" if exc.filename else ""),
                hint="check store.root, free space and the folder's permissions",
            ) from None

    def _read(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def _write(self, key: str, data: bytes, *, overwrite: bool) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            if overwrite:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)  # atomic create-only: fails when `path` exists
                except FileExistsError:
                    raise VersionExists(key) from None
        finally:
            tmp.unlink(missing_ok=True)

    def _read_tagged(self, key: str) -> tuple[bytes, str] | None:
        data = self._read(key)
        return None if data is None else (data, hashlib.sha256(data).hexdigest())

    def _write_if(self, key: str, data: bytes, *, tag: str | None) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f".{path.name}.lock"), "a+b") as lock:
            # the read and the rename happen under one lock, so the swap is atomic for
            # every writer; readers need no lock (the rename is atomic)
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                found = self._read_tagged(key)
                if (found[1] if found is not None else None) != tag:
                    raise WriteConflict(key)
                self._write(key, data, overwrite=True)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _read_range(self, key: str, offset: int, length: int) -> bytes:
        with open(self._path(key), "rb") as fh:
            return os.pread(fh.fileno(), length, offset)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._path(prefix.rstrip("/"))
        if not base.is_dir():
            return
        for dirpath, dirnames, names in os.walk(base):
            dirnames[:] = [d for d in dirnames if d != STAGING]
            for name in names:
                path = Path(dirpath) / name
                stat = path.stat()
                yield ObjectInfo(
                    key=path.relative_to(self.root).as_posix(),
                    size=stat.st_size,
                    modified=datetime.fromtimestamp(stat.st_mtime, UTC),
                )

    def _delete(self, keys: list[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)

    def _cleanup(self, model_name: str) -> None:
        staging = self._path(join_key(self.model_key(model_name), STAGING))
        if staging.is_dir():
            for entry in staging.iterdir():
                with contextlib.suppress(OSError):
                    if time.time() - entry.stat().st_mtime > STALE_STAGING_SECONDS:
                        shutil.rmtree(entry, ignore_errors=True)

    def _upload_version(
        self,
        bundle_dir: Path,
        manifest: dict[str, str],
        manifest_bytes: bytes,
        model_name: str,
        version: str,
    ) -> None:
        final = self._path(self.version_key(model_name, version))
        staging = self._path(
            join_key(self.model_key(model_name), STAGING, f"{version}-{uuid.uuid4().hex[:8]}")
        )
        staging.mkdir(parents=True)
        try:
            total = sum((bundle_dir / rel).stat().st_size for rel in manifest)
            with TransferProgress(f"push {model_name} {version}", total) as progress:
                for rel in [*manifest, MANIFEST]:
                    target = staging / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(bundle_dir / rel, target)
                    progress.add(target.stat().st_size)
            try:
                # hashing the copy checks the source bundle and the copy in one read
                verify_bundle(staging)
            except BundleError as exc:
                problems = exc.message.split(": ", 1)[-1]
                raise BundleError(
                    f"bundle {bundle_dir} does not match its {MANIFEST}: {problems}; nothing was published",
                    hint="the bundle was modified after it was written; export it again from a clean run",
                ) from None
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                # rename refuses a non-empty target: an existing version is never replaced
                os.rename(staging, final)
            except OSError:
                stored = final / MANIFEST
                if stored.is_file() and stored.read_bytes() == manifest_bytes:
                    return  # the same bundle, pushed at the same time by someone else
                if not stored.is_file():
                    raise StoreError(
                        f"version {version} of {model_name!r} in {self.describe()} is an incomplete "
                        f"version (files without {MANIFEST}, written behind prodml's back) that differs "
                        "from this bundle; stored versions are never overwritten",
                        hint=f"push again in a second (version ids carry the time), or delete {final}",
                    ) from None
                raise StoreError(
                    f"version {version} of {model_name!r} already exists in {self.describe()}; "
                    "stored versions are never overwritten",
                    hint="push again in a second (version ids carry the time)",
                ) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)


@hookimpl
def prodml_backends() -> list[Backend]:
    return [
        Backend(
            "store",
            "local",
            LocalStoreConfig,
            LocalStore,
            requires=(),
            extra=None,
            description="a folder on this machine (atomic rename, verified)",
            aliases=("file", "filesystem", "fs"),
        )
    ]
