"""Point-in-time correctness of the feast source, against an independent pandas reference.

The generated repository is built to hit the hard cases: two feature views with different
TTLs, timestamp and created columns; a composite join key (user, device) on one and field
mappings (file column -> join key and feature name) on the other; several rows of one entity
with the same event timestamp and different created timestamps (ties, broken by the later
created); rows written long after their event timestamp (late, back-filled); rows stored out
of order; entity rows repeated, placed exactly on a feature timestamp, one second before it,
exactly on the TTL boundary and one second past it.

The rule the reference implements (Feast's documented semantics, both ends inclusive):

    candidates = rows with the entity row's join key values and
                 event_ts - ttl <= feature_ts <= event_ts
                 and, when filtering by created time, created <= event_ts
    value      = the candidate with the greatest (feature_ts, created, row in the file)

Every feature value is unique, so each joined value identifies the source row it came from.
prodml's DuckDB engine must equal the reference on every row; Feast's DuckDB offline store
too (it breaks ties by created like the rule); Feast's file store up to how it breaks ties.
"""

from __future__ import annotations

import logging
import textwrap
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.feast, pytest.mark.slow]

feast = pytest.importorskip("feast")

from prodml.plugins.sources.feast import FeastSource, FeastSourceConfig  # noqa: E402

T0 = pd.Timestamp("2024-03-01T00:00:00Z")
TTL = {"fast": timedelta(hours=1), "slow": timedelta(days=2)}
USERS, DEVICES = 8, 2

DEFINITIONS = """
from datetime import timedelta
from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
device = Entity(name="device", join_keys=["device_id"], value_type=ValueType.INT64)

# keyed by (user, device); event time and created time under Feast's usual names
fast = FeatureView(
    name="fast", entities=[user, device], ttl=timedelta(hours=1),
    schema=[Field(name="fast_value", dtype=Float64), Field(name="fast_extra", dtype=Float64)],
    source=FileSource(name="fast_src", path="data/fast.parquet",
                      timestamp_field="event_timestamp", created_timestamp_column="created"),
)

# keyed by user; other column names, the join key and the feature renamed by field_mapping
slow = FeatureView(
    name="slow", entities=[user], ttl=timedelta(days=2),
    schema=[Field(name="slow_value", dtype=Float64)],
    source=FileSource(name="slow_src", path="data/slow.parquet", timestamp_field="ts",
                      created_timestamp_column="written",
                      field_mapping={"uid": "user_id", "raw": "slow_value"}),
)

both = FeatureService(name="both", features=[fast[["fast_value"]], slow])
"""

STORE_YAML = """
project: pit_{name}
provider: local
registry: .feast/registry.db
online_store: {{type: sqlite, path: .feast/online.db}}
offline_store: {{type: {offline}}}
entity_key_serialization_version: 3
"""

#: how each view's file names the columns the reference needs
LAYOUT = {
    "fast": {
        "keys": [("user_id", "user_id"), ("device_id", "device_id")],
        "ts": "event_timestamp",
        "created": "created",
        "value": "fast_value",
    },
    "slow": {"keys": [("user_id", "uid")], "ts": "ts", "created": "written", "value": "raw"},
}


def feature_table(rng: np.random.Generator, view: str, rows_per_key: int, base: float) -> pd.DataFrame:
    """Rows on a coarse minute grid (so event timestamps tie), created 0-3 h later, shuffled."""
    layout = LAYOUT[view]
    keys = [(u, d) for u in range(1, USERS + 1) for d in range(1, DEVICES + 1)]
    if view == "slow":
        keys = [(u, 0) for u in range(1, USERS + 1)]
    pairs = np.repeat(np.array(keys), rows_per_key, axis=0)
    minutes = rng.integers(0, 8 * 60, len(pairs))
    table = pd.DataFrame({layout["ts"]: T0 + pd.to_timedelta(minutes - minutes % 5, unit="min")})
    # created: mostly minutes after the event, a quarter arrive hours late (back-filled);
    # the row number in seconds keeps (event_ts, created) unique per key
    late = rng.random(len(table)) < 0.25
    delay_min = np.where(late, rng.integers(60, 180, len(table)), rng.integers(0, 10, len(table)))
    table[layout["created"]] = (
        table[layout["ts"]]
        + pd.to_timedelta(delay_min, unit="min")
        + pd.to_timedelta(np.arange(len(table)), unit="s")
    )
    for (_, column), values in zip(layout["keys"], pairs.T, strict=False):
        table[column] = values.astype("int64")
    # force ties: copy some rows' event timestamps onto the next row of the same key
    same_key = (pairs[1:] == pairs[:-1]).all(axis=1)
    for i in range(0, len(table) - 1, 7):
        if same_key[i]:
            table.at[i + 1, layout["ts"]] = table.at[i, layout["ts"]]
    table[layout["value"]] = base + np.arange(len(table), dtype="float64")
    if view == "fast":
        table["fast_extra"] = -table["fast_value"]
    return table.sample(frac=1.0, random_state=int(base)).reset_index(drop=True)


def entity_rows(rng: np.random.Generator, fast: pd.DataFrame) -> pd.DataFrame:
    """Random events, events on the exact edges of the fast view's rows, and repeats."""
    n = 300
    events = pd.DataFrame(
        {
            "user_id": rng.integers(1, USERS + 2, n).astype("int64"),  # USERS + 1 has no features
            "device_id": rng.integers(1, DEVICES + 1, n).astype("int64"),
            "event_timestamp": T0 + pd.to_timedelta(rng.integers(-30, 10 * 60, n), unit="min"),
            "edge": "random",
        }
    )
    sampled = fast.sample(40, random_state=1)
    edges = []
    for name, offset in EDGES.items():
        edges.append(
            pd.DataFrame(
                {
                    "user_id": sampled["user_id"].to_numpy(),
                    "device_id": sampled["device_id"].to_numpy(),
                    "event_timestamp": sampled["event_timestamp"] + offset,
                    "edge": name,
                    "edge_value": sampled["fast_value"].to_numpy(),
                }
            )
        )
    out = pd.concat([events, *edges], ignore_index=True)
    # entity rows repeated: every twentieth row again, later in the frame
    out = pd.concat([out, out.iloc[::20].assign(edge="repeat")], ignore_index=True)
    out["event_timestamp"] = out["event_timestamp"].astype("datetime64[us, UTC]")
    out["row"] = np.arange(len(out), dtype="float64")  # the label: which entity row this was
    return out


EDGES = {
    "at": pd.Timedelta(0),  # exactly at the feature timestamp: included
    "before": -pd.Timedelta(seconds=1),  # one second before it: the row must not be used
    "ttl": pd.Timedelta(TTL["fast"]),  # exactly TTL later: still included
    "past_ttl": pd.Timedelta(TTL["fast"]) + pd.Timedelta(seconds=1),  # one second past: expired
}


def candidates(events: pd.DataFrame, view: str, table: pd.DataFrame, by_created: bool) -> list[pd.DataFrame]:
    """Per event: the joinable rows of ``table`` at the newest joinable feature timestamp.

    Straight from the definition: every (event, feature row) pair with equal join keys,
    filtered by the rule, then the pairs at each event's newest feature timestamp.
    """
    layout, ttl = LAYOUT[view], TTL[view]
    ts, created = layout["ts"], layout["created"]
    keys = [e for e, _ in layout["keys"]]
    left = events[keys].assign(_at=events["event_timestamp"], _event=np.arange(len(events)))
    right = table.assign(_file_row=np.arange(len(table)))
    pairs = left.merge(right, left_on=keys, right_on=[c for _, c in layout["keys"]], suffixes=("_e", ""))
    at = pairs["_at"]
    ok = (pairs[ts] <= at) & (pairs[ts] >= at - ttl)
    if by_created:
        ok &= pairs[created] <= at
    pairs = pairs[ok]
    pairs = pairs[pairs[ts] == pairs.groupby("_event")[ts].transform("max")]
    groups = dict(list(pairs.groupby("_event")))
    empty = pairs.iloc[:0]
    return [groups.get(i, empty) for i in range(len(events))]


def reference(events: pd.DataFrame, view: str, table: pd.DataFrame, by_created: bool) -> pd.Series:
    """The value each event gets per the rule in the module docstring (NaN: none)."""
    created, value = LAYOUT[view]["created"], LAYOUT[view]["value"]
    picked = [
        rows.sort_values([created, "_file_row"])[value].iloc[-1] if len(rows) else np.nan
        for rows in candidates(events, view, table, by_created)
    ]
    return pd.Series(picked, dtype="float64")


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict:
    rng = np.random.default_rng(2024)
    root = tmp_path_factory.mktemp("pit")
    tables = {"fast": feature_table(rng, "fast", 8, 1000.0), "slow": feature_table(rng, "slow", 3, 5000.0)}
    events = entity_rows(rng, tables["fast"])
    repos = {offline: make_repo(root / offline, offline, tables, events) for offline in ("file", "duckdb")}
    want = {
        by_created: pd.DataFrame({view: reference(events, view, tables[view], by_created) for view in tables})
        for by_created in (True, False)
    }
    return {"tables": tables, "events": events, "repos": repos, "want": want}


def make_repo(repo: Path, offline: str, tables: dict[str, pd.DataFrame], events: pd.DataFrame) -> Path:
    (repo / "data").mkdir(parents=True)
    (repo / "definitions.py").write_text(textwrap.dedent(DEFINITIONS))
    (repo / "feature_store.yaml").write_text(STORE_YAML.format(name=repo.name, offline=offline))
    for name, table in tables.items():
        table.to_parquet(repo / "data" / f"{name}.parquet", index=False)
    events[["user_id", "device_id", "event_timestamp", "row"]].to_parquet(
        repo / "entities.parquet", index=False
    )
    return repo


def fetch(repo: Path, *, engine: str, by_created: bool = True, **overrides) -> pd.DataFrame:
    settings = {
        "type": "feast",
        "repo_path": repo,
        "features": ["fast:fast_value", "slow:slow_value"],
        "entity_df": repo / "entities.parquet",
        "label": "row",
        "engine": engine,
        "filter_by_created_timestamp": by_created,
        "drop_incomplete": True,
        "materialize": False,
        **overrides,
    }
    return FeastSource(FeastSourceConfig(**settings)).training_frame()


def expected(generated: dict, by_created: bool) -> pd.DataFrame:
    want = generated["want"][by_created]
    frame = pd.DataFrame({"fast_value": want["fast"], "slow_value": want["slow"]})
    frame["row"] = generated["events"]["row"]
    return frame.dropna().reset_index(drop=True)


SELECTIONS = {
    "feature-refs": {},
    "service-full-names": {"features": None, "feature_service": "both", "full_feature_names": True},
}


@pytest.mark.parametrize("selection", list(SELECTIONS))
@pytest.mark.parametrize("by_created", [True, False], ids=["created-cutoff", "event-time-only"])
def test_duckdb_engine_matches_the_reference(generated: dict, by_created: bool, selection: str) -> None:
    want = expected(generated, by_created)
    # the generated data must really contain the hard cases, or the test proves little
    assert 0 < len(want) < len(generated["events"])
    got = fetch(generated["repos"]["file"], engine="duckdb", by_created=by_created, **SELECTIONS[selection])
    if selection == "service-full-names":
        want = want.rename(columns={"fast_value": "fast__fast_value", "slow_value": "slow__slow_value"})
    # rows without a value in TTL are exactly the ones dropped, and the others keep their order
    assert got["row"].tolist() == want["row"].tolist()
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


@pytest.mark.parametrize("by_created", [True, False], ids=["created-cutoff", "event-time-only"])
def test_feast_duckdb_store_matches_the_reference(generated: dict, by_created: bool) -> None:
    """Feast's own DuckDB store agrees: the data has ties on event time, none on created too."""
    want = expected(generated, by_created)
    got = fetch(generated["repos"]["duckdb"], engine="feast", by_created=by_created)
    assert got["row"].tolist() == want["row"].tolist()
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


@pytest.mark.parametrize("by_created", [True, False], ids=["created-cutoff", "event-time-only"])
def test_file_store_matches_the_reference_up_to_ties(generated: dict, by_created: bool) -> None:
    """Feast's file (dask) store agrees with the reference except how it breaks exact ties.

    Among rows of one entity with the *same* event timestamp it should take the newest
    created one; Feast 0.67's dask store sorts by created, then by event time with a sort
    that is not stable, so it may take any of them. Every other row must match exactly,
    and a tie must still resolve to one of the tied, joinable rows (never to a leak).
    """
    events, tables = generated["events"], generated["tables"]
    want = expected(generated, by_created)
    got = fetch(generated["repos"]["file"], engine="feast", by_created=by_created)
    assert got["row"].tolist() == want["row"].tolist()
    kept = events["row"].isin(got["row"]).to_numpy()
    for view in ("fast", "slow"):
        column, source = f"{view}_value", LAYOUT[view]["value"]
        allowed = candidates(events[kept], view, tables[view], by_created)
        for value, wanted, options in zip(got[column], want[column], allowed, strict=True):
            if len(options) == 1:
                assert value == wanted
            else:
                assert value in set(options[source])


def test_the_reference_sees_ties_late_rows_repeats_and_edges(generated: dict) -> None:
    tables, events, want = generated["tables"], generated["events"], generated["want"]
    fast = tables["fast"]
    assert fast.duplicated(["user_id", "device_id", "event_timestamp"]).any(), "no ties generated"
    assert ((fast["created"] - fast["event_timestamp"]) > TTL["fast"]).any(), "no late rows generated"
    changed = (want[True]["fast"].fillna(-1) != want[False]["fast"].fillna(-1)).sum()
    assert changed > 10, "the created cutoff changes nothing"
    tied = [c for c in candidates(events, "fast", fast, True) if len(c) > 1]
    assert len(tied) > 5, "no event sees a tie among its joinable rows"
    tie_values = [set(c["fast_value"]) for c in tied]
    assert all(len(v) > 1 for v in tie_values), "tied rows must differ in value, or a wrong pick hides"
    assert (events["edge"] == "repeat").sum() > 10
    # the edge rows decide answers: the sampled row itself is the answer exactly at its
    # timestamp and exactly TTL later (where nothing newer came), never a second before it
    # nor a second past the TTL; without the edges at TTL those answers would be missing
    for by_created in (True, False):
        answer = want[by_created]["fast"]
        row_is_answer = answer.to_numpy() == events["edge_value"].to_numpy()
        by_edge = pd.Series(row_is_answer).groupby(events["edge"].to_numpy()).sum()
        # (with the cutoff a row is rarely known at its own timestamp: it is written later)
        assert by_edge["ttl"] > 5 and (by_created or by_edge["at"] > 5), by_edge.to_dict()
        assert by_edge["before"] == 0 and by_edge["past_ttl"] == 0, by_edge.to_dict()
        at_ttl = answer[(events["edge"] == "ttl").to_numpy()].to_numpy()
        past_ttl = answer[(events["edge"] == "past_ttl").to_numpy()].to_numpy()
        assert (np.isnan(past_ttl) & ~np.isnan(at_ttl)).sum() > 5, "one second past the TTL changes nothing"


def test_identical_ties_resolve_to_the_last_row_in_the_file(tmp_path: Path) -> None:
    """Rows equal in event and created time: the engine takes the one written last, every time."""
    event = T0 + pd.Timedelta(hours=5)
    fast = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1],
            "device_id": [1, 1, 1, 1],
            "event_timestamp": [event - pd.Timedelta(minutes=10)] * 3 + [event - pd.Timedelta(minutes=20)],
            "created": [event - pd.Timedelta(minutes=5)] * 3 + [event],
            "fast_value": [1.0, 2.0, 3.0, 4.0],
            "fast_extra": [0.0] * 4,
        }
    )
    slow = pd.DataFrame({"uid": [1], "ts": [event], "written": [event], "raw": [7.0]})
    events = pd.DataFrame(
        {"user_id": [1, 1], "device_id": [1, 1], "event_timestamp": [event, event], "row": [0.0, 1.0]}
    )
    repo = make_repo(tmp_path / "ties", "duckdb", {"fast": fast, "slow": slow}, events)
    got = fetch(repo, engine="duckdb")
    assert got["fast_value"].tolist() == [3.0, 3.0]
    # Feast's DuckDB store picks one of the tied rows, which one is not defined
    assert set(fetch(repo, engine="feast")["fast_value"]) <= {1.0, 2.0, 3.0}


ENGINES = [("duckdb", "file"), ("feast", "file"), ("feast", "duckdb")]


@pytest.mark.parametrize(("engine", "offline"), ENGINES, ids=["duckdb-engine", "feast-file", "feast-duckdb"])
def test_no_value_from_the_future(generated: dict, engine: str, offline: str) -> None:
    """Leakage: no joined value was timestamped, or written, after its entity row's timestamp."""
    got = fetch(generated["repos"][offline], engine=engine)
    events = generated["events"].set_index("row")
    for view in ("fast", "slow"):
        layout = LAYOUT[view]
        source_rows = generated["tables"][view].set_index(layout["value"])
        origin = source_rows.loc[got[f"{view}_value"].to_numpy()]
        event_ts = events.loc[got["row"].to_numpy(), "event_timestamp"].to_numpy()
        assert (origin[layout["ts"]].to_numpy() <= event_ts).all()
        assert (origin[layout["created"]].to_numpy() <= event_ts).all()
        assert (origin[layout["ts"]].to_numpy() >= event_ts - TTL[view]).all()


@pytest.mark.parametrize(("engine", "offline"), ENGINES, ids=["duckdb-engine", "feast-file", "feast-duckdb"])
def test_a_value_written_after_the_event_never_appears(tmp_path: Path, engine: str, offline: str) -> None:
    """A minimal leakage scenario: the newest values exist but came too late for the event."""
    event = T0 + pd.Timedelta(hours=5)
    second = pd.Timedelta(seconds=1)
    fast = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1],
            "device_id": [1, 1, 1, 1],
            "event_timestamp": [event - pd.Timedelta(minutes=30), event - second, event, event + second],
            "created": [
                event - pd.Timedelta(minutes=29),
                event + pd.Timedelta(hours=1),
                event,
                event + second,
            ],
            "fast_value": [1.0, 2.0, 3.0, 4.0],
            "fast_extra": [0.0] * 4,
        }
    )
    # 1: old and known; 2: back-filled after the event; 3: at the event, known; 4: future
    slow = pd.DataFrame(
        {
            "uid": [1, 1],
            "ts": [event - pd.Timedelta(hours=1), event + pd.Timedelta(minutes=1)],
            "written": [event - pd.Timedelta(hours=1), event + pd.Timedelta(minutes=1)],
            "raw": [10.0, 99.0],
        }
    )
    events = pd.DataFrame(
        {
            "user_id": [1, 1],
            "device_id": [1, 1],
            "event_timestamp": [event, event - second],
            "row": [0.0, 1.0],
        }
    )
    repo = make_repo(tmp_path / "leak", offline, {"fast": fast, "slow": slow}, events)
    got = fetch(repo, engine=engine)
    assert got["fast_value"].tolist() == [3.0, 1.0]
    assert got["slow_value"].tolist() == [10.0, 10.0]
    assert not got.isin([2.0, 4.0, 99.0]).any().any()
    # without the created cutoff the back-filled value 2 becomes visible to the second event,
    # but a value timestamped after the event (4, 99) still never does
    loose = fetch(repo, engine=engine, by_created=False)
    assert loose["fast_value"].tolist() == [3.0, 2.0]
    assert not loose.isin([4.0, 99.0]).any().any()


def test_auto_picks_duckdb_for_parquet_views_and_says_so(
    generated: dict, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="prodml.plugins.sources.feast"):
        got = fetch(generated["repos"]["file"], engine="auto")
    assert "DuckDB queries over 2 view(s) (engine: auto)" in caplog.text
    pd.testing.assert_frame_equal(got, expected(generated, True), check_dtype=False)
