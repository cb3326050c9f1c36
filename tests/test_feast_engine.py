"""The feast source's DuckDB engine: memory limit and spilling, engine choice, clear errors.

Exactness against the independent reference lives in test_pit_correctness.py; these tests
cover what surrounds the join.
"""

from __future__ import annotations

import hashlib
import logging
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

pytestmark = [pytest.mark.feast, pytest.mark.slow]

feast = pytest.importorskip("feast")

from prodml.core.errors import ConfigError, DataError  # noqa: E402
from prodml.plugins.sources._pit_engine import parse_memory_limit  # noqa: E402
from prodml.plugins.sources.feast import FeastSource, FeastSourceConfig  # noqa: E402

T0 = pd.Timestamp("2024-01-01T00:00:00Z")
FEATURES = [f"f{i}" for i in range(24)]

DEFINITIONS = """
from datetime import timedelta
from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.data_format import DeltaFormat
from feast.types import Float64

customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.INT64)
stats = FeatureView(
    name="stats", entities=[customer], ttl=timedelta(days=30),
    schema=[Field(name=f"f{i}", dtype=Float64) for i in range(24)],
    source=FileSource(name="stats_src", path="data/stats.parquet", timestamp_field="event_timestamp",
                      created_timestamp_column="created", field_mapping={FIELD_MAPPING}),
)
delta = FeatureView(
    name="delta", entities=[customer], ttl=timedelta(days=30),
    schema=[Field(name="d", dtype=Float64)],
    source=FileSource(name="delta_src", path="data/delta_table", file_format=DeltaFormat(),
                      timestamp_field="event_timestamp"),
)
"""

STORE_YAML = """
project: engine_test
provider: local
registry: .feast/registry.db
online_store: {type: sqlite, path: .feast/online.db}
offline_store: {type: duckdb}
entity_key_serialization_version: 3
"""


def make_repo(root: Path, *, entity_rows: int, feature_rows: int, field_mapping: str = "{}") -> Path:
    rng = np.random.default_rng(5)
    repo = root / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "definitions.py").write_text(
        textwrap.dedent(DEFINITIONS).replace("{FIELD_MAPPING}", field_mapping)
    )
    (repo / "feature_store.yaml").write_text(STORE_YAML)
    customers = max(feature_rows // 10, 1)
    table = pd.DataFrame(
        {
            "customer_id": rng.integers(1, customers + 1, feature_rows),
            "event_timestamp": T0 + pd.to_timedelta(rng.integers(0, 90 * 86400, feature_rows), unit="s"),
        }
    )
    table["created"] = table["event_timestamp"] + pd.to_timedelta(
        rng.integers(0, 86400, feature_rows), unit="s"
    )
    table[FEATURES] = rng.normal(size=(feature_rows, len(FEATURES)))
    table.to_parquet(repo / "data" / "stats.parquet", index=False)
    events = pd.DataFrame(
        {
            "customer_id": rng.integers(1, customers + 1, entity_rows),
            "event_timestamp": T0 + pd.to_timedelta(rng.integers(0, 90 * 86400, entity_rows), unit="s"),
            "label": rng.normal(size=entity_rows),
        }
    )
    events.to_parquet(repo / "entities.parquet", index=False)
    return repo


def source(repo: Path, **overrides) -> FeastSource:
    settings = {
        "type": "feast",
        "repo_path": repo,
        "features": [f"stats:{f}" for f in FEATURES],
        "entity_df": repo / "entities.parquet",
        "label": "label",
        "drop_incomplete": True,
        "materialize": False,
        **overrides,
    }
    return FeastSource(FeastSourceConfig(**settings))


def checksum(frame: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes()).hexdigest()


def test_a_memory_limit_far_below_the_frame_still_completes(tmp_path: Path) -> None:
    """DuckDB spills to its folder instead of failing; the frame is the same to the bit."""
    repo = make_repo(tmp_path, entity_rows=200_000, feature_rows=20_000)
    spill = tmp_path / "spill"
    limited = source(repo, memory_limit="16MiB", spill_dir=spill).training_frame()
    free = source(repo, memory_limit="1GB").training_frame()
    size = limited.memory_usage(index=False).sum()
    assert size > 2 * parse_memory_limit("16MiB"), f"the frame ({size} bytes) must dwarf the limit"
    assert len(limited) == len(free) > 150_000
    assert checksum(limited) == checksum(free)
    # the private spill folder is removed afterwards, whatever went into it
    assert spill.is_dir() and not any(spill.iterdir())


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2GB", 2 * 10**9), ("512MiB", 512 * 2**20), ("1.5 GiB", int(1.5 * 2**30)), (" 64mb ", 64 * 10**6)],
)
def test_memory_limit_sizes(value: str, expected: int) -> None:
    assert parse_memory_limit(value) == expected


def test_memory_limit_share_of_the_machine() -> None:
    from prodml.plugins.sources._pit_engine import machine_memory

    assert parse_memory_limit("25%") == int(machine_memory() * 0.25)
    assert parse_memory_limit(None) == int(machine_memory() * 0.5)


@pytest.mark.parametrize(
    ("value", "message"),
    [("lots", "is not a size"), ("150%", "between 0% and 100%"), ("1MB", "below 16 MiB")],
)
def test_bad_memory_limit_is_a_config_error(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        FeastSourceConfig(
            type="feast",
            repo_path=tmp_path,
            features=["a:b"],
            entity_df=tmp_path / "e.parquet",
            label="y",
            memory_limit=value,
        )
    assert "memory_limit" in str(caught.value)


def test_auto_falls_back_to_feast_for_a_delta_view_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = make_repo(tmp_path, entity_rows=10, feature_rows=10)
    with caplog.at_level(logging.INFO, logger="prodml.plugins.sources.feast"):
        assert source(repo, features=["stats:f0", "delta:d"]).engine == "feast"
    assert "engine auto chose feast: view 'delta' reads DeltaFormat, not Parquet" in caplog.text
    with pytest.raises(ConfigError, match="engine duckdb cannot compute these features: view 'delta'"):
        _ = source(repo, features=["stats:f0", "delta:d"], engine="duckdb").engine
    assert source(repo).engine == "duckdb"


def test_a_wrong_field_mapping_names_the_view_and_the_columns(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, entity_rows=10, feature_rows=10, field_mapping='{"f_zero": "f0"}')
    with pytest.raises(
        DataError, match=r"feature view 'stats': .*stats.parquet lack column\(s\) f_zero; they have"
    ):
        source(repo).training_frame()


def test_a_missing_source_file_names_the_view(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, entity_rows=10, feature_rows=10)
    (repo / "data" / "stats.parquet").unlink()
    with pytest.raises(
        DataError, match=r"feature view .stats.: its source file .*stats\.parquet does not exist"
    ):
        source(repo).training_frame()


def test_the_progress_bar_of_a_terminal_changes_nothing(tmp_path: Path) -> None:
    """On a TTY DuckDB prints progress for long joins; the answer is the same."""
    from datetime import timedelta

    from prodml.plugins.sources._pit_engine import PointInTimeJoin, ViewQuery

    repo = make_repo(tmp_path, entity_rows=2_000, feature_rows=500)
    view = ViewQuery(
        name="stats",
        paths=(str(repo / "data" / "stats.parquet"),),
        join_keys=(("customer_id", "customer_id"),),
        timestamp_field="event_timestamp",
        created_column="created",
        features=(("f0", "f0"), ("f1", "f1")),
        ttl=timedelta(days=30),
    )
    entities = pd.read_parquet(repo / "entities.parquet")
    frames = [
        PointInTimeJoin(2**30, progress=progress).join(
            entities, "event_timestamp", [view], filter_by_created=True
        )
        for progress in (True, False)
    ]
    pd.testing.assert_frame_equal(frames[0], frames[1])
    assert frames[0]["f0"].notna().sum() > 100
