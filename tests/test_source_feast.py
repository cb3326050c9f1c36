"""The feast data source on the example repository: real Feast apply, retrieval, materialize, online."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = [pytest.mark.feast, pytest.mark.slow]

feast = pytest.importorskip("feast")

from prodml.core.config import load_config_dict  # noqa: E402
from prodml.core.errors import ConfigError, DataError  # noqa: E402
from prodml.core.plugins import default_registry  # noqa: E402
from prodml.plugins.sources.feast import FeastSource, FeastSourceConfig  # noqa: E402
from prodml.testing.sources import DataSourceConformance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "feast_repo"
FEATURES = ["house_structure:sqft", "house_structure:rooms", "house_location:quality"]


@pytest.fixture
def repo(tmp_path: Path, copy_feast_example) -> Path:
    return copy_feast_example(tmp_path / "feast_repo")


def make_source(repo: Path, **overrides) -> FeastSource:
    data = {
        "type": "feast",
        "repo_path": str(repo),
        "features": FEATURES,
        "entity_df": str(repo / "data" / "house_sales.parquet"),
        "label": "target",
        **overrides,
    }
    return FeastSource(FeastSourceConfig.model_validate(data))


class TestFeastSource(DataSourceConformance):
    @pytest.fixture
    def backend_config(self, repo: Path) -> dict:
        return {
            "type": "feast",
            "repo_path": str(repo),
            "features": FEATURES,
            "entity_df": "feast_repo/data/house_sales.parquet",
            "label": "target",
        }

    @pytest.fixture
    def entity_rows(self) -> list[dict]:
        return [{"house_id": 3}, {"house_id": 1}, {"house_id": 200}]

    def test_refs_keys_and_names(self, backend: FeastSource) -> None:
        assert backend.feature_refs == FEATURES
        assert backend.entity_keys == ["house_id"]
        assert backend.feature_names == ["sqft", "rooms", "quality"]


class TestFeastSourceDuckDB(DataSourceConformance):
    """The same repository joined by Feast's own DuckDB offline store, selected by a feature service."""

    @pytest.fixture
    def backend_config(self, repo: Path) -> dict:
        return {
            "type": "feast",
            "repo_path": str(repo),
            "feature_store_yaml": "feature_store.duckdb.yaml",
            "engine": "feast",
            "feature_service": "house_price_model",
            "entity_df": str(repo / "data" / "house_sales.parquet"),
            "label": "target",
            "full_feature_names": True,
        }

    @pytest.fixture
    def entity_rows(self) -> list[dict]:
        return [{"house_id": 7}]

    def test_service_refs(self, backend: FeastSource) -> None:
        assert backend.feature_refs == [
            "house_structure:sqft",
            "house_structure:rooms",
            "house_structure:age",
            "house_location:distance",
            "house_location:quality",
        ]
        assert backend.feature_names[0] == "house_structure__sqft"


# -- from a fresh clone, the same kind of frame as the csv source ---------------------------


def config_section(config_file: Path, base_dir: Path):
    data = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    cls = default_registry().get("source", data["source"]["type"]).backend.config
    return cls.model_validate(data["source"], context={"base_dir": base_dir})


def test_config_feast_yaml_works_from_a_fresh_clone(tmp_path: Path, copy_feast_example) -> None:
    """config/feast.yaml on a copy of the tracked files: no registry, no `feast apply`."""
    clone = tmp_path / "clone"
    copy_feast_example(clone / "examples" / "feast_repo")
    (clone / "config").mkdir()
    shutil.copy2(ROOT / "config" / "feast.yaml", clone / "config" / "feast.yaml")
    shutil.copy2(ROOT / "config" / "local.yaml", clone / "config" / "local.yaml")
    shutil.copytree(ROOT / "examples" / "quickstart" / "data", clone / "examples" / "quickstart" / "data")
    assert not (clone / "examples" / "feast_repo" / ".feast").exists()

    section = config_section(clone / "config" / "feast.yaml", clone / "config")
    feast_source = default_registry().create("source", section)
    frame = feast_source.training_frame()
    schema = feast_source.schema(frame)
    assert (clone / "examples" / "feast_repo" / ".feast" / "registry.db").is_file()
    assert (clone / "examples" / "feast_repo" / ".feast" / "online_store.db").is_file()

    csv_section = config_section(clone / "config" / "local.yaml", clone / "config")
    csv_source = default_registry().create("source", csv_section)
    csv_frame = csv_source.training_frame()
    # the trainer sees the same kind of frame: the same feature names, numeric, label last
    assert list(frame.columns) == list(csv_frame.columns)
    assert schema.feature_names == csv_source.schema(csv_frame).feature_names
    assert schema.feature_refs == (
        "house_structure:sqft",
        "house_structure:rooms",
        "house_structure:age",
        "house_location:distance",
        "house_location:quality",
    )
    assert schema.entity_keys == ("house_id",)
    assert len(frame) == 2000

    # the example's label is a function of the point-in-time features: a linear fit explains it
    import numpy as np

    x = np.c_[frame.iloc[:, :-1].to_numpy("float64"), np.ones(len(frame))]
    y = frame["target"].to_numpy()
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    assert 1 - ((x @ coef - y) ** 2).sum() / ((y - y.mean()) ** 2).sum() > 0.95


def test_example_data_is_generated_deterministically() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "make_data.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- online store ---------------------------------------------------------------------------


def latest_offline(repo: Path) -> pd.DataFrame:
    """The newest row per house of each source table (reference for the online store)."""
    frames = []
    for stem in ("house_structure", "house_location"):
        table = pd.read_parquet(repo / "data" / f"{stem}.parquet")
        newest = table.sort_values(["event_timestamp", "created"]).groupby("house_id").tail(1)
        frames.append(newest.set_index("house_id").drop(columns=["event_timestamp", "created"]))
    return frames[0].join(frames[1])


def test_online_features_after_materialize_equal_latest_offline_values(repo: Path) -> None:
    source = make_source(repo, features=None, feature_service="house_price_model")
    source.training_frame()  # materializes
    houses = list(range(1, 201))
    online = source.online_features([{"house_id": h} for h in houses]).set_index("house_id")
    expected = latest_offline(repo).loc[houses, online.columns]
    pd.testing.assert_frame_equal(online, expected, check_dtype=False, check_names=False)


def test_online_features_in_a_new_process_fill_a_fresh_store(repo: Path) -> None:
    """A serving process on a fresh clone: no fetch ran, the source applies and materializes."""
    source = make_source(repo)
    online = source.online_features([{"house_id": 5}])
    assert online.loc[0, "sqft"] == pytest.approx(latest_offline(repo).loc[5, "sqft"])


def test_online_features_name_bad_rows(repo: Path) -> None:
    source = make_source(repo)
    with pytest.raises(DataError, match=r"entity row 1 lacks join key\(s\) house_id"):
        source.online_features([{"house_id": 1}, {"id": 2}])
    with pytest.raises(DataError, match=r"no 'sqft' for 1 of 2 entity row\(s\), first \{'house_id': 9999\}"):
        source.online_features([{"house_id": 1}, {"house_id": 9999}])


def test_materialize_false_leaves_the_online_store_empty(repo: Path) -> None:
    make_source(repo, materialize=False).training_frame()
    assert not (repo / ".feast" / "online_store.db").exists() or not any(
        fv.materialization_intervals for fv in make_source(repo, apply=False).store.list_feature_views()
    )


# -- timestamps -----------------------------------------------------------------------------


def test_naive_timestamps_are_read_in_the_configured_zone(repo: Path, tmp_path: Path) -> None:
    sales = pd.read_parquet(repo / "data" / "house_sales.parquet").head(200)
    aware = tmp_path / "aware.csv"
    sales.to_csv(aware, index=False)  # ISO strings with +00:00
    naive_paris = tmp_path / "paris.csv"
    local = sales.assign(
        event_timestamp=sales["event_timestamp"].dt.tz_convert("Europe/Paris").dt.tz_localize(None)
    )
    local.to_csv(naive_paris, index=False)
    reference = make_source(repo, entity_df=str(aware), materialize=False).training_frame()
    paris = make_source(repo, entity_df=str(naive_paris), timezone="Europe/Paris", materialize=False)
    pd.testing.assert_frame_equal(paris.training_frame(), reference)
    # read as UTC instead, the same wall-clock times are 1 hour later: other values for some rows
    as_utc = make_source(repo, entity_df=str(naive_paris), materialize=False).training_frame()
    assert not as_utc.equals(reference)


# -- bad input ------------------------------------------------------------------------------


def test_repo_path_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"source\.repo_path: Feast repository .*nowhere does not exist"):
        make_source(tmp_path / "nowhere").training_frame()


def test_not_a_feast_repo(tmp_path: Path) -> None:
    (tmp_path / "feature_store.duckdb.yaml").write_text("project: x\n")
    with pytest.raises(
        ConfigError, match=r"is not a Feast repository: feature_store\.yaml is missing \(found: feature_store"
    ):
        make_source(tmp_path).training_frame()


def test_definitions_that_fail_to_import(repo: Path) -> None:
    (repo / "broken.py").write_text("raise RuntimeError('oops')\n")
    with pytest.raises(
        ConfigError, match=r"importing broken\.py of the Feast repository .* RuntimeError: oops"
    ):
        make_source(repo).training_frame()


def test_unknown_feature_view_lists_views(repo: Path) -> None:
    source = make_source(repo, features=["house_structur:sqft"])
    with pytest.raises(ConfigError) as info:
        source.training_frame()
    text = str(info.value)
    assert "source.features[0]: unknown feature view 'house_structur'" in text
    assert "house_location, house_structure" in text
    assert "did you mean 'house_structure'" in text


def test_unknown_feature_lists_features(repo: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"feature view 'house_location' has no feature 'qualty'; its features: distance, quality",
    ):
        make_source(repo, features=["house_location:qualty"]).training_frame()


def test_unknown_feature_service(repo: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"unknown feature service 'house_price'; the repository has: house_price_model"
    ):
        make_source(repo, features=None, feature_service="house_price").training_frame()


def test_entity_df_missing_file(repo: Path) -> None:
    with pytest.raises(DataError, match=r"entity_df .*nope\.parquet not found"):
        make_source(repo, entity_df=str(repo / "nope.parquet")).training_frame()


@pytest.mark.parametrize(
    ("drop", "expected"),
    [
        ("house_id", r"has no join key column 'house_id'"),
        ("event_timestamp", r"has no timestamp column 'event_timestamp'"),
        ("target", r"has no label column 'target'"),
    ],
)
def test_entity_df_missing_column(repo: Path, tmp_path: Path, drop: str, expected: str) -> None:
    path = tmp_path / "events.parquet"
    pd.read_parquet(repo / "data" / "house_sales.parquet").drop(columns=drop).to_parquet(path)
    with pytest.raises(DataError, match=expected):
        make_source(repo, entity_df=str(path)).training_frame()


def test_entity_df_bad_timestamps(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("house_id,event_timestamp,target\n1,yesterday,1.0\n")
    with pytest.raises(DataError, match=r"column 'event_timestamp' holds values that are not timestamps"):
        make_source(repo, entity_df=str(path)).training_frame()


def test_entity_df_without_rows(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("house_id,event_timestamp,target\n")
    with pytest.raises(DataError, match=r"has no rows"):
        make_source(repo, entity_df=str(path)).training_frame()


def test_rows_without_features_are_named_or_dropped(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "house_id,event_timestamp,target\n"
        "1,2024-02-01T00:00:00Z,1.0\n"  # fine
        "2,2023-01-01T00:00:00Z,2.0\n"  # before any feature row
        "3,2024-12-01T00:00:00Z,3.0\n"  # house_location expired (30-day TTL)
    )
    with pytest.raises(DataError) as info:
        make_source(repo, entity_df=str(path), materialize=False).training_frame()
    text = str(info.value)
    assert "2 of 3 entity rows have no value" in text
    # (Feast's file store loses a row entirely when one view has no value for it, so the
    # structure features are reported missing for both rows too)
    assert "house_location:quality (2)" in text
    assert "first at entity_df row 2 (house_id=2" in text
    assert "drop_incomplete" in text
    frame = make_source(repo, entity_df=str(path), drop_incomplete=True, materialize=False).training_frame()
    assert frame["target"].tolist() == [1.0]


def test_empty_result(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("house_id,event_timestamp,target\n9999,2024-02-01T00:00:00Z,1.0\n")
    with pytest.raises(DataError, match=r"the training frame is empty"):
        make_source(repo, entity_df=str(path), drop_incomplete=True, materialize=False).training_frame()


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({}, r"give either `features`"),
        ({"features": ["a:b"], "feature_service": "s"}, r"give either `features`"),
        ({"features": ["sqft"]}, r"feature ref 'sqft' must look like 'view:feature'"),
        ({"features": ["v:a", "v:a"]}, r"features lists a ref twice"),
        ({"features": ["v:a"], "timezone": "Mars/Olympus"}, r"unknown time zone 'Mars/Olympus'"),
        (
            {"features": ["v:a"], "entity_frame": "x"},
            r"unknown key 'entity_frame' — did you mean 'entity_df'",
        ),
    ],
)
def test_bad_config_is_a_config_error(tmp_path: Path, section: dict, expected: str) -> None:
    data = {
        "project": "p",
        "stages": ["fetch"],
        "source": {"type": "feast", "repo_path": ".", "entity_df": "e.csv", "label": "y", **section},
    }
    with pytest.raises(ConfigError, match=expected):
        load_config_dict(data, base_dir=tmp_path)


def test_the_plugin_module_imports_no_feast() -> None:
    code = "import sys, prodml.plugins.sources.feast; print('feast' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
