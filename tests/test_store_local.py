"""The local store: conformance suite plus what is specific to a folder on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from prodml.core.errors import StoreError
from prodml.core.interfaces import ModelRef
from prodml.testing.stores import MODEL, ModelStoreConformance, RawAccess


class LocalRaw(RawAccess):
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, ref: ModelRef, relpath: str) -> Path:
        return self.root / ref.model_name / "versions" / ref.version / relpath

    def write(self, ref: ModelRef, relpath: str, data: bytes) -> None:
        path = self._path(ref, relpath)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def delete(self, ref: ModelRef, relpath: str) -> None:
        self._path(ref, relpath).unlink()


class TestLocalStore(ModelStoreConformance):
    uri_scheme = "file://"

    @pytest.fixture
    def backend_config(self) -> dict:
        return {"type": "local", "root": "models"}

    @pytest.fixture
    def raw(self, base_dir: Path) -> RawAccess:
        return LocalRaw(base_dir / "models")

    @pytest.fixture
    def big_file_bytes(self) -> int:
        return 6 << 20

    def test_root_resolves_against_the_config_folder(self, config, base_dir: Path) -> None:
        assert Path(config.root) == (base_dir / "models").resolve()

    def test_layout_on_disk(self, store, bundles, base_dir: Path) -> None:
        ref = store.push(bundles(), MODEL)
        model_dir = base_dir / "models" / MODEL
        assert (model_dir / "versions" / ref.version / "MANIFEST.sha256").is_file()
        assert ref.version in (model_dir / "latest").read_text()
        # nothing left in staging once the version is renamed into place
        assert not any((model_dir / ".staging").iterdir())
        assert ref.uri == (model_dir / "versions" / ref.version).as_uri()

    def test_a_failed_copy_publishes_nothing(self, store, bundles, base_dir: Path, monkeypatch) -> None:
        import shutil

        first = store.push(bundles(seed=1), MODEL)
        calls = {"n": 0}
        real_copy = shutil.copyfile

        def failing_copy(src, dst, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(28, "No space left on device")
            return real_copy(src, dst, *args, **kwargs)

        monkeypatch.setattr(shutil, "copyfile", failing_copy)
        with pytest.raises(StoreError, match="No space left"):
            store.push(bundles(seed=2), MODEL)
        monkeypatch.undo()
        assert store.resolve(MODEL) == first
        assert [v.version for v in store.versions(MODEL)] == [first.version]
        assert not any((base_dir / "models" / MODEL / ".staging").iterdir())

    def test_unwritable_root_is_a_store_error(self, tmp_path: Path, bundles) -> None:
        from prodml.plugins.stores.local import LocalStore, LocalStoreConfig

        if os.geteuid() == 0:
            pytest.skip("root can write anywhere")
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            store = LocalStore(LocalStoreConfig(type="local", root=locked / "models"))
            with pytest.raises(StoreError, match="locked"):
                store.push(bundles(), MODEL)
        finally:
            locked.chmod(0o700)
