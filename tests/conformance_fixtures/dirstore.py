"""A versioned-directory store and a JSON Lines source, written as a third-party plugin would.

They import only :mod:`prodml.plugin` and pass prodml's conformance suites; the deliberately
broken backends in ``broken.py`` change one thing each, and tests/test_conformance_suites.py
proves the suites catch every one. This module imports helpers by name (``from prodml.plugin
import new_version_id``), which the store suite must not care about.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import Field

from prodml.plugin import (
    MANIFEST,
    MOVE_REASONS,
    Backend,
    BundleError,
    ConfigPath,
    DataError,
    DataSource,
    LatestMove,
    ModelRef,
    ModelStore,
    ModelVersion,
    PluginConfig,
    StoreError,
    bundle_files,
    hookimpl,
    new_version_id,
    parse_manifest,
    sha256_file,
    verify_bundle,
)

LATEST = "latest.json"
_CURRENT = ModelStore.CURRENT  # move_latest's default ``expect``: from whatever latest is


class DirStoreConfig(PluginConfig):
    """Keep model versions in a local folder (conformance fixture)."""

    type: Literal["dir"]
    root: ConfigPath = Field(description="folder holding <model>/versions/<version>/")


class DirStore(ModelStore):
    """Versions as folders; a version is complete once its manifest is in place."""

    config: DirStoreConfig

    # -- layout ---------------------------------------------------------------------------

    def _model_dir(self, model_name: str) -> Path:
        if not model_name or "/" in model_name or "\\" in model_name or model_name.startswith("."):
            raise StoreError(f"{model_name!r} is not a model name")
        return Path(self.config.root) / model_name

    def _version_dir(self, model_name: str, version: str) -> Path:
        if not version or "/" in version or version.startswith("."):
            raise StoreError(f"{version!r} is not a version of {model_name!r}")
        return self._model_dir(model_name) / "versions" / version

    def _ref(self, model_name: str, version: str) -> ModelRef:
        digest = sha256_file(self._version_dir(model_name, version) / MANIFEST)
        return ModelRef(
            model_name=model_name,
            version=version,
            store_type=self.config.type,
            uri=self._version_dir(model_name, version).resolve().as_uri(),
            digest=digest,
        )

    def _complete(self, model_name: str) -> list[str]:
        versions = self._model_dir(model_name) / "versions"
        if not versions.is_dir():
            return []
        # a staging folder (a push in progress) is not a version, even with its manifest
        return sorted(
            p.name for p in versions.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file()
        )

    # -- the ModelStore API ---------------------------------------------------------------

    def _check_bundle(self, bundle_dir: Path) -> None:
        verify_bundle(bundle_dir)

    def _identical(self, model_name: str, digest: str) -> str | None:
        for version in self._complete(model_name):
            if sha256_file(self._version_dir(model_name, version) / MANIFEST) == digest:
                return version
        return None

    def push(self, bundle_dir: Path, model_name: str, *, latest: bool = True) -> ModelRef:
        bundle_dir = Path(bundle_dir)
        self._model_dir(model_name)  # checks the name
        self._check_bundle(bundle_dir)
        digest = sha256_file(bundle_dir / MANIFEST)
        version = self._identical(model_name, digest) or self._store(bundle_dir, model_name, digest)
        if latest and self._latest(model_name) != version:
            self._move(model_name, version, reason="export", run_id=None, expect=_CURRENT)
        return self._ref(model_name, version)

    def _existing(self, model_name: str, version: str, digest: str) -> str:
        """A version folder already holds ``version``: the same content, or refuse."""
        target = self._version_dir(model_name, version)
        if (target / MANIFEST).is_file():
            if sha256_file(target / MANIFEST) == digest:
                return version  # another push of this bundle got there first
            raise StoreError(
                f"version {version} of {model_name!r} exists with other content; never overwritten",
                hint="push again in a second (version ids carry the time)",
            )
        raise StoreError(
            f"version {version} of {model_name!r} is an incomplete version with other files; "
            "never overwritten",
            hint=f"push again in a second (version ids carry the time), or delete {target}",
        )

    def _store(self, bundle_dir: Path, model_name: str, digest: str) -> str:
        version = new_version_id(bundle_dir)
        target = self._version_dir(model_name, version)
        if target.exists():
            return self._existing(model_name, version, digest)
        staging = target.parent / f".staging-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            for rel in bundle_files(bundle_dir):
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(bundle_dir / rel, staging / rel)
            shutil.copyfile(bundle_dir / MANIFEST, staging / MANIFEST)
            verify_bundle(staging)
            try:
                staging.rename(target)  # atomic; fails when the folder appeared meanwhile
            except OSError:
                return self._existing(model_name, version, digest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return version

    # -- latest: one pointer file, moved under a lock, every move recorded ---------------------

    def _latest(self, model_name: str) -> str | None:
        pointer = self._model_dir(model_name) / LATEST
        return json.loads(pointer.read_text(encoding="utf-8"))["version"] if pointer.is_file() else None

    def _move(
        self, model_name: str, version: str, *, reason: str, run_id: str | None, expect: object
    ) -> dict:
        if reason not in MOVE_REASONS:
            raise StoreError(
                f"unknown reason {reason!r} for moving latest; one of: {', '.join(MOVE_REASONS)}"
            )
        model_dir = self._model_dir(model_name)
        model_dir.mkdir(parents=True, exist_ok=True)
        with open(model_dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            current = self._latest(model_name)
            if expect is not _CURRENT and expect != current:
                raise StoreError(
                    f"latest of {model_name!r} is {current or 'unset'}, not {expect or 'unset'}: "
                    "it was moved meanwhile, so nothing was changed"
                )
            if version not in self._complete(model_name):
                raise StoreError(f"version {version} of {model_name!r} is not stored")
            history = model_dir / "history"
            history.mkdir(exist_ok=True)
            move = {
                "at": datetime.now(UTC).isoformat(),
                "model_name": model_name,
                "from_version": current,
                "to_version": version,
                "reason": reason,
                "run_id": run_id,
            }
            seq = len(list(history.glob("*.json"))) + 1
            (history / f"{seq:010d}.json").write_text(json.dumps(move), encoding="utf-8")
            tmp = model_dir / f".{LATEST}.{uuid.uuid4().hex}"
            tmp.write_text(json.dumps({"version": version}), encoding="utf-8")
            tmp.replace(model_dir / LATEST)
        return move

    def move_latest(
        self,
        model_name: str,
        version: str,
        *,
        reason: str,
        run_id: str | None = None,
        expect: object = _CURRENT,
    ) -> LatestMove:
        return LatestMove.model_validate(
            self._move(model_name, version, reason=reason, run_id=run_id, expect=expect)
        )

    def latest_history(self, model_name: str) -> list[LatestMove]:
        history = self._model_dir(model_name) / "history"
        files = sorted(history.glob("*.json")) if history.is_dir() else []
        return [LatestMove.model_validate_json(f.read_text(encoding="utf-8")) for f in files]

    def _names(self, manifest_text: str, where: str) -> dict[str, str]:
        return parse_manifest(manifest_text, source=where)  # refuses names leaving the folder

    def pull(self, ref: ModelRef, dest: Path) -> Path:
        dest = Path(dest)
        source = self._version_dir(ref.model_name, ref.version)
        if not (source / MANIFEST).is_file():
            raise StoreError(f"version {ref.version} of {ref.model_name!r} is not stored")
        manifest_bytes = (source / MANIFEST).read_bytes()
        if hashlib.sha256(manifest_bytes).hexdigest() != ref.digest:
            raise BundleError(f"the manifest of {ref.version} does not match the ref's digest")
        names = self._names(manifest_bytes.decode(), f"{ref.version}/{MANIFEST}")
        unlisted = sorted(set(bundle_files(source)) - set(names))
        if unlisted:
            raise BundleError(f"version {ref.version} holds files its manifest does not list: {unlisted}")
        if dest.exists():
            if (dest / MANIFEST).is_file() and sha256_file(dest / MANIFEST) == ref.digest:
                verify_bundle(dest)
                return dest
            raise StoreError(f"{dest} exists and holds something else")
        staging = dest.parent / f".{dest.name}.pulling-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            for rel in names:
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                if not (source / rel).is_file():
                    raise BundleError(f"version {ref.version}: missing {rel}")
                shutil.copyfile(source / rel, staging / rel)
            (staging / MANIFEST).write_bytes(manifest_bytes)
            verify_bundle(staging)
            staging.rename(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return dest

    def resolve(self, model_name: str, version: str = "latest") -> ModelRef:
        if version == "latest":
            found = self._latest(model_name)
            if found is None:
                raise StoreError(f"no latest version of {model_name!r}")
            version = found
        if version not in self._complete(model_name):
            raise StoreError(f"version {version} of {model_name!r} is not stored")
        return self._ref(model_name, version)

    def _created_at(self, model_name: str, version: str) -> datetime:
        return datetime.strptime(version.split("-")[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)

    def versions(self, model_name: str) -> list[ModelVersion]:
        latest = self._latest(model_name)
        found = []
        for version in self._complete(model_name):
            folder = self._version_dir(model_name, version)
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            created = self._created_at(model_name, version)
            found.append(
                ModelVersion(version=version, created_at=created, size_bytes=size, latest=version == latest)
            )
        return sorted(found, key=lambda v: v.version, reverse=True)

    def uri(self, ref: ModelRef) -> str:
        return self._version_dir(ref.model_name, ref.version).resolve().as_uri()


class LinesSourceConfig(PluginConfig):
    """Read training rows from a JSON Lines file (conformance fixture)."""

    type: Literal["lines"]
    path: ConfigPath = Field(description="JSON Lines file, one object per row")
    label: str = Field(description="label key")
    features: list[str] = Field(description="feature keys, in model input order")


class LinesSource(DataSource):
    """Rows from a JSON Lines file, refused when a value is missing or not a number."""

    config: LinesSourceConfig

    @property
    def label(self) -> str:
        return self.config.label

    @property
    def feature_names(self) -> list[str]:
        return list(self.config.features)

    def _read(self):
        import pandas as pd

        frame = pd.read_json(self.config.path, lines=True)
        return frame[[*self.feature_names, self.label]].reset_index(drop=True)

    def training_frame(self):
        from pandas.api.types import is_numeric_dtype

        frame = self._read()
        for column in frame.columns:
            if not is_numeric_dtype(frame[column]):
                raise DataError(f"{self.config.path}: column {column!r} holds values that are not numbers")
            if frame[column].isna().any():
                raise DataError(f"{self.config.path}: column {column!r} has missing values")
        return frame


@hookimpl
def prodml_backends() -> list[Backend]:
    return [
        Backend("store", "dir", DirStoreConfig, DirStore, description="versioned folders (fixture)"),
        Backend("source", "lines", LinesSourceConfig, LinesSource, description="JSON Lines (fixture)"),
    ]
