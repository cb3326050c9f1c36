"""prodml's conformance suites applied to the fixture backends (run by test_conformance_suites.py).

Not collected by prodml's own test run (the file name does not start with ``test_``):
tests/test_conformance_suites.py runs it in a separate pytest and checks which tests fail
for which backend.
"""

from __future__ import annotations

from pathlib import Path

import broken
import dirstore
import pytest

from prodml.core.plugins import Registry
from prodml.plugin import ModelRef
from prodml.testing.sources import DataSourceConformance
from prodml.testing.stores import ModelStoreConformance, RawAccess


class DirRaw(RawAccess):
    """Writes into a DirStore's folders behind its back."""

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


class DirStoreCase(ModelStoreConformance):
    store_type = "dir"
    uri_scheme = "file://"

    @pytest.fixture
    def registry(self) -> Registry:
        return Registry(autoload=False, builtins=False, plugins={"dirstore": dirstore, "broken": broken})

    @pytest.fixture
    def big_file_bytes(self) -> int:
        return 1 << 20

    @pytest.fixture
    def backend_config(self, tmp_path: Path) -> dict:
        return {"type": self.store_type, "root": str(tmp_path / "store")}

    @pytest.fixture
    def raw(self, tmp_path: Path) -> RawAccess:
        return DirRaw(tmp_path / "store")


class TestDir(DirStoreCase):
    store_type = "dir"


class TestDirNoDoc(DirStoreCase):
    store_type = "dir-nodoc"


class TestDirTraversal(DirStoreCase):
    store_type = "dir-traversal"


class TestDirUnverified(DirStoreCase):
    store_type = "dir-unverified"


class TestDirMtime(DirStoreCase):
    store_type = "dir-mtime"


class TestDirAlwaysNew(DirStoreCase):
    store_type = "dir-always-new"


ROWS = [{"a": 0.5 * i, "b": float(i % 3), "y": 1.0 * i} for i in range(8)]


def write_lines(path: Path, rows: list[dict]) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


class LinesCase(DataSourceConformance):
    source_type = "lines"

    @pytest.fixture
    def registry(self) -> Registry:
        return Registry(autoload=False, builtins=False, plugins={"dirstore": dirstore, "broken": broken})

    @pytest.fixture
    def backend_config(self, tmp_path: Path) -> dict:
        write_lines(tmp_path / "rows.jsonl", ROWS)
        return {"type": self.source_type, "path": "rows.jsonl", "label": "y", "features": ["a", "b"]}

    @pytest.fixture
    def dirty_backend_config(self, tmp_path: Path):
        def make(problem: str, column: str) -> dict:
            rows = [dict(r) for r in ROWS]
            rows[3][column] = None if problem == "missing" else "abc"
            write_lines(tmp_path / "dirty.jsonl", rows)
            return {"type": self.source_type, "path": "dirty.jsonl", "label": "y", "features": ["a", "b"]}

        return make


class TestLines(LinesCase):
    source_type = "lines"


class TestLinesUnchecked(LinesCase):
    source_type = "lines-unchecked"
