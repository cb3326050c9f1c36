"""Deliberately broken backends: each makes one mistake a conformance suite must catch.

Each is the correct fixture from ``dirstore.py`` with one method (or the docstring) changed,
so a suite test that fails here and passes there fails because of that mistake.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from dirstore import DirStore, DirStoreConfig, LinesSource, LinesSourceConfig

from prodml.plugin import MANIFEST, Backend, bundle_files, hookimpl, new_version_id


class NoDocStoreConfig(DirStoreConfig):
    type: Literal["dir-nodoc"]  # no docstring of its own: inspect.getdoc shows the parent's


class TrustingPullConfig(DirStoreConfig):
    """Versioned folders whose pull trusts the file names in a manifest (broken fixture)."""

    type: Literal["dir-traversal"]


class TrustingNamesStore(DirStore):
    """Mistake: manifest names are joined to the destination without a traversal check."""

    def _names(self, manifest_text: str, where: str) -> dict[str, str]:
        names = {}
        for line in manifest_text.splitlines():
            digest, _, name = line.partition("  ")
            names[name] = digest
        return names


class UnverifiedPushConfig(DirStoreConfig):
    """Versioned folders whose push trusts the local bundle (broken fixture)."""

    type: Literal["dir-unverified"]


class UnverifiedPushStore(DirStore):
    """Mistake: push copies the files the manifest lists without hashing them."""

    def _check_bundle(self, bundle_dir: Path) -> None:
        pass  # the mistake: no verify_bundle(bundle_dir)

    def _store(self, bundle_dir: Path, model_name: str, digest: str) -> str:
        # and no check of what landed either
        version = new_version_id(bundle_dir)
        target = self._version_dir(model_name, version)
        if target.exists():
            return self._existing(model_name, version, digest)
        target.mkdir(parents=True)
        for rel in bundle_files(bundle_dir):
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(bundle_dir) / rel, target / rel)
        shutil.copyfile(Path(bundle_dir) / MANIFEST, target / MANIFEST)
        return version


class MtimeStoreConfig(DirStoreConfig):
    """Versioned folders dated by file modification time (broken fixture)."""

    type: Literal["dir-mtime"]


class MtimeStore(DirStore):
    """Mistake: created_at is the folder's modification time, not when the version was made."""

    def _created_at(self, model_name: str, version: str) -> datetime:
        folder = self._version_dir(model_name, version)
        return datetime.fromtimestamp(folder.stat().st_mtime, UTC)


class AlwaysNewConfig(DirStoreConfig):
    """Versioned folders that store every push anew (broken fixture)."""

    type: Literal["dir-always-new"]


class AlwaysNewStore(DirStore):
    """Mistake: pushing content that is already stored makes another version."""

    def _identical(self, model_name: str, digest: str) -> str | None:
        return None


class PassThroughConfig(LinesSourceConfig):
    """JSON Lines rows passed on unchecked (broken fixture)."""

    type: Literal["lines-unchecked"]


class PassThroughSource(LinesSource):
    """Mistake: missing values and words reach the trainer."""

    def training_frame(self):
        return self._read()


@hookimpl
def prodml_backends() -> list[Backend]:
    return [
        Backend("store", "dir-nodoc", NoDocStoreConfig, DirStore),
        Backend("store", "dir-traversal", TrustingPullConfig, TrustingNamesStore),
        Backend("store", "dir-unverified", UnverifiedPushConfig, UnverifiedPushStore),
        Backend("store", "dir-mtime", MtimeStoreConfig, MtimeStore),
        Backend("store", "dir-always-new", AlwaysNewConfig, AlwaysNewStore),
        Backend("source", "lines-unchecked", PassThroughConfig, PassThroughSource),
    ]
