"""prodml's own DataSource conformance suite, run against the parquet plugin."""

from __future__ import annotations

from pathlib import Path

import pytest

from prodml.plugin import DataError
from prodml.testing.sources import DataSourceConformance
from prodml.testing.stores import ModelStoreConformance, RawAccess


def write_parquet(path: Path, rows: int = 50) -> Path:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    x = rng.normal(size=(rows, 3))
    frame = pd.DataFrame({"id": np.arange(rows), "a": x[:, 0], "b": x[:, 1], "c": x[:, 2]})
    frame["target"] = 2 * frame.a - frame.b + 0.5 * frame.c
    frame.to_parquet(path)
    return path


class TestParquetSource(DataSourceConformance):
    @pytest.fixture
    def backend_config(self, tmp_path: Path) -> dict:
        write_parquet(tmp_path / "train.parquet")
        return {"type": "parquet", "path": "train.parquet", "label": "target", "drop": ["id"]}

    @pytest.fixture
    def dirty_backend_config(self, tmp_path: Path):
        """Parquet data with a null, or a word, in one feature column."""

        def make(problem: str, column: str) -> dict:
            import pandas as pd

            frame = pd.read_parquet(write_parquet(tmp_path / "clean.parquet"))
            if problem == "missing":
                frame.loc[3, column] = None
            else:  # Parquet columns have one type: the word makes it a text column
                frame[column] = frame[column].astype(str)
                frame.loc[3, column] = "abc"
            frame.to_parquet(tmp_path / "dirty.parquet")
            return {"type": "parquet", "path": "dirty.parquet", "label": "target", "drop": ["id"]}

        return make

    def test_features_default_to_all_but_label_and_drop(self, backend) -> None:
        assert backend.feature_names == ["a", "b", "c"]


def test_missing_label_is_named(tmp_path: Path) -> None:
    from prodml_parquet.plugin import ParquetSource, ParquetSourceConfig

    write_parquet(tmp_path / "t.parquet")
    source = ParquetSource(ParquetSourceConfig(type="parquet", path=tmp_path / "t.parquet", label="price"))
    with pytest.raises(DataError, match="label column 'price' not found"):
        source.training_frame()


class FolderRawAccess(RawAccess):
    """Writes and deletes files of a stored version behind the store's back."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, ref, relpath: str) -> Path:
        return self.root / ref.model_name / "versions" / ref.version / relpath

    def write(self, ref, relpath: str, data: bytes) -> None:
        path = self._path(ref, relpath)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def delete(self, ref, relpath: str) -> None:
        self._path(ref, relpath).unlink(missing_ok=True)


class TestSharedFolderStore(ModelStoreConformance):
    uri_scheme = "s3://models/team-a/"

    @pytest.fixture
    def backend_config(self) -> dict:
        return {
            "type": "sharedfolder",
            "root": "shared",
            "bucket": "models",
            "prefix": "team-a",
            "endpoint_url": "http://gateway.storage.svc:8333",
        }

    @pytest.fixture
    def raw(self, tmp_path: Path) -> RawAccess:
        return FolderRawAccess(tmp_path / "shared")


def test_shared_folder_store_on_a_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pods get the key pair from a Secret; KServe reads the version through the gateway."""
    from prodml_parquet.store import SharedFolderConfig, SharedFolderStore

    from prodml.plugin import ModelRef

    config = SharedFolderConfig(
        type="sharedfolder", root=tmp_path, bucket="models", endpoint_url="https://gw.example:8333"
    )
    store = SharedFolderStore(config)
    assert [(e.env, e.secret_name, e.secret_key) for e in store.pod_environment("creds")] == [
        ("SHARED_FOLDER_ACCESS_KEY_ID", "creds", "access-key-id"),
        ("SHARED_FOLDER_SECRET_ACCESS_KEY", "creds", "secret-access-key"),
    ]
    assert store.reachable_from_cluster()
    local = SharedFolderStore(config.model_copy(update={"endpoint_url": "http://127.0.0.1:8333"}))
    assert not local.reachable_from_cluster()
    ref = ModelRef(model_name="m", version="20261129T173000Z-0123abcd", store_type="sharedfolder", uri="")
    monkeypatch.setenv("SHARED_FOLDER_ACCESS_KEY_ID", "AKIA")
    monkeypatch.delenv("SHARED_FOLDER_SECRET_ACCESS_KEY", raising=False)
    storage = store.kserve_storage(ref, with_values=True)
    assert storage.storage_uri == "s3://models/m/versions/20261129T173000Z-0123abcd"
    assert storage.secret_annotations["serving.kserve.io/s3-endpoint"] == "gw.example:8333"
    assert storage.secret_annotations["serving.kserve.io/s3-usehttps"] == "1"
    assert {k: v.get_secret_value() for k, v in storage.secret_values.items()} == {
        "AWS_ACCESS_KEY_ID": "AKIA"
    }
    assert store.kserve_storage(ref).secret_values is None
