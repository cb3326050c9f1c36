"""The csv data source: conformance, column selection, and every bad input named clearly."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from prodml.core.config import load_config_dict
from prodml.core.errors import ConfigError, DataError
from prodml.core.plugins import default_registry
from prodml.plugins.sources.csv import CsvSource, CsvSourceConfig
from prodml.testing.sources import DataSourceConformance

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart" / "data" / "train.csv"


def write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def source(path: Path, **kwargs) -> CsvSource:
    return CsvSource(CsvSourceConfig(type="csv", path=path, label=kwargs.pop("label", "y"), **kwargs))


class TestCsvSource(DataSourceConformance):
    @pytest.fixture
    def backend_config(self, tmp_path: Path) -> dict:
        write(
            tmp_path, "id,a,b,ts,y\n1,0.5,3,2024-01-01,1.0\n2,1.5,4,2024-01-02,0.0\n3,2.5,5,2024-01-03,1.0\n"
        )
        return {"type": "csv", "path": "data.csv", "label": "y", "drop": ["id", "ts"]}

    @pytest.fixture
    def dirty_backend_config(self, tmp_path: Path):
        def make(problem: str, column: str) -> dict:
            value = "" if problem == "missing" else "abc"
            rows = [
                {"id": i, "a": 0.5 + i, "b": 3 + i, "ts": "2024-01-01", "y": float(i % 2)} for i in range(4)
            ]
            rows[2][column] = value
            lines = ["id,a,b,ts,y", *(",".join(str(r[k]) for k in ("id", "a", "b", "ts", "y")) for r in rows)]
            write(tmp_path, "\n".join(lines) + "\n", name="dirty.csv")
            return {"type": "csv", "path": "dirty.csv", "label": "y", "drop": ["id", "ts"]}

        return make


class TestQuickstartData(DataSourceConformance):
    @pytest.fixture
    def backend_config(self) -> dict:
        return {"type": "csv", "path": str(QUICKSTART), "label": "target"}

    def test_quickstart_shape(self, frame) -> None:
        assert list(frame.columns) == ["sqft", "rooms", "age", "distance", "quality", "target"]
        assert 200 <= len(frame) <= 5000

    def test_quickstart_is_generated_deterministically(self, tmp_path: Path) -> None:
        import subprocess
        import sys

        script = ROOT / "examples" / "quickstart" / "make_data.py"
        done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr

    def test_quickstart_relationship_is_learnable(self, frame) -> None:
        import numpy as np

        # a linear least-squares fit already explains most of the variance, so a tiny
        # Keras model trained for a few epochs reaches a good metric
        x = np.c_[frame.iloc[:, :-1].to_numpy(), np.ones(len(frame))]
        y = frame["target"].to_numpy()
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        r2 = 1 - ((x @ coef - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()
        assert r2 > 0.9


def source_section(config_file: Path):
    """The validated ``source:`` section of a config file (other sections are other tests' concern)."""
    import yaml

    data = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    cls = default_registry().get("source", data["source"]["type"]).backend.config
    return cls.model_validate(data["source"], context={"base_dir": config_file.parent})


def test_local_config_builds_the_csv_source() -> None:
    built = default_registry().create("source", source_section(ROOT / "config" / "local.yaml"))
    assert isinstance(built, CsvSource)
    frame = built.training_frame()
    assert frame.columns[-1] == "target"


def test_explicit_features_keep_their_order(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b,c,y\n1,2,3,4\n5,6,7,8\n")
    frame = source(path, features=["c", "a"]).training_frame()
    assert list(frame.columns) == ["c", "a", "y"]
    assert frame["c"].tolist() == [3, 7]


def test_dtypes_are_recorded(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b,y\n1,2.5,0\n3,4.5,1\n")
    src = source(path)
    schema = src.schema(src.training_frame())
    assert schema.dtypes == {"a": "int64", "b": "float64", "y": "int64"}
    assert schema.rows == 2


def test_relative_path_resolves_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    write(tmp_path, "a,y\n1,2\n")
    config = load_config_dict(
        {"project": "p", "stages": ["fetch"], "source": {"type": "csv", "path": "../data.csv", "label": "y"}},
        base_dir=tmp_path / "cfg",
    )
    assert config.source.path == (tmp_path / "data.csv").resolve()


def test_the_source_imports_no_pandas_until_used() -> None:
    import subprocess
    import sys

    code = "import sys, prodml.plugins.sources.csv; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- bad input: each names the file and the column ---------------------------------------


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("", {}, r"is empty"),
        ("a,y\n", {}, r"has a header but no data rows"),
        ("a,b,y\n1,2,3\n", {"label": "target"}, r"label column 'target' is not in .*data\.csv"),
        ("a,b,y\n1,2,3\n", {"label": "Y"}, r"did you mean 'y'"),
        (
            "a,b,y\n1,2,3\n",
            {"features": ["a", "c"]},
            r"feature column 'c' is not in .*data\.csv; columns: a, b, y",
        ),
        ("a,b,y\n1,2,3\n", {"drop": ["zz"]}, r"drop column 'zz' is not in"),
        ("a,a,y\n1,2,3\n", {}, r"duplicate column names: 'a'"),
        (
            "a,b,y\n1,x,3\n2,3,4\n4,z,5\n",
            {},
            r"column 'b' is not numeric: 2 row\(s\) hold text, first at line 2: 'x'",
        ),
        (
            "a,b,y\n1,2,3\n2,,4\n,5,6\n7,8,\n",
            {},
            r"3 row\(s\) have missing values \(NaN\), first at line 3; "
            r"columns with NaNs: a \(1\), b \(1\), y \(1\)",
        ),
        ("id,y\n1,2\n", {"drop": ["id"]}, r"no feature columns left"),
    ],
)
def test_bad_input_is_named(tmp_path: Path, text: str, kwargs: dict, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(DataError, match=expected) as info:
        source(path, **kwargs).training_frame()
    assert "data.csv" in str(info.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"file .*nope\.csv not found") as info:
        source(tmp_path / "nope.csv").training_frame()
    assert "source.path" in str(info.value)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a directory"):
        source(tmp_path).training_frame()


def test_non_numeric_label_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "a,y\n1,cat\n2,dog\n")
    with pytest.raises(DataError, match=r"column 'y' is not numeric"):
        source(path).training_frame()


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"features": ["a", "y"]}, r"source\.label|label 'y' is also listed in features"),
        ({"features": ["a", "a"]}, r"features lists 'a' twice"),
        ({"features": []}, r"features is empty"),
        ({"features": ["a"], "drop": ["a"]}, r"'a' is both in features and in drop"),
        ({"drop": ["y"]}, r"label 'y' is listed in drop"),
        ({"colums": ["a"]}, r"unknown key 'colums'"),
    ],
)
def test_bad_config_is_a_config_error(tmp_path: Path, section: dict, expected: str) -> None:
    data = {
        "project": "p",
        "stages": ["fetch"],
        "source": {"type": "csv", "path": "x.csv", "label": "y", **section},
    }
    with pytest.raises(ConfigError, match=expected):
        load_config_dict(data, base_dir=tmp_path)


def test_frame_matches_bare_pandas(tmp_path: Path) -> None:
    frame = source(QUICKSTART, label="target").training_frame()
    pd.testing.assert_frame_equal(frame, pd.read_csv(QUICKSTART))


def test_byte_order_mark_is_not_part_of_the_first_name(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfa,y\n1,2\n")
    src = source(path)
    assert src.feature_names == ["a"]
    assert list(src.training_frame().columns) == ["a", "y"]
