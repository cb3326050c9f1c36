"""prodml's own DataSource conformance suite, run against the parquet plugin."""

from __future__ import annotations

from pathlib import Path

import pytest

from prodml.plugin import DataError
from prodml.testing.sources import DataSourceConformance


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
