"""Generate the example feature repository's data (deterministic; the output is committed).

    python examples/feast_repo/make_data.py          # (re)writes data/*.parquet
    python examples/feast_repo/make_data.py --check  # exit 1 if the committed files differ

Writes, for 200 houses over 13 weeks of 2024:

* ``data/house_structure.parquet``: sqft, rooms, age at listing, and a later row for
  renovated houses (age changes);
* ``data/house_location.parquet``: distance and quality, recomputed weekly;
* ``data/house_sales.parquet``: the entity frame: ``house_id``, ``event_timestamp`` (the
  sale) and the label ``target``, computed from the feature values known at the sale
  (point in time), so a model trained on Feast's training frame can learn it.

Every source row has a ``created`` timestamp 0-30 minutes after its ``event_timestamp``.
The committed data, not this script, is what prodml reads; the script documents how it
was made and lets anyone regenerate it bit for bit.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
START = datetime(2024, 1, 1, tzinfo=UTC)
HOUSES = 200
WEEKS = 13
SALES = 2000
SEED = 7
WEIGHTS = {"sqft": 1.5, "rooms": 0.8, "age": -0.6, "distance": -1.0, "quality": 1.2}
TTL = {"house_structure": timedelta(days=365), "house_location": timedelta(days=30)}


def _stamp(base: datetime, seconds: np.ndarray) -> pd.Series:
    return pd.Series(pd.Timestamp(base) + pd.to_timedelta(np.round(seconds), unit="s")).astype(
        "datetime64[us, UTC]"
    )


def _with_created(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    delay = pd.to_timedelta(np.round(rng.uniform(0, 1800, len(frame))), unit="s")
    frame["created"] = (frame["event_timestamp"] + delay).astype("datetime64[us, UTC]")
    return frame


def make_tables(seed: int = SEED) -> dict[str, pd.DataFrame]:
    """The three tables, keyed by file stem."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, HOUSES + 1, dtype="int64")

    # structure: one row at listing (day 0) and, for about a third, a renovation later
    listed = pd.DataFrame({"house_id": ids, "event_timestamp": _stamp(START, rng.uniform(0, 86400, HOUSES))})
    for name in ("sqft", "rooms", "age"):
        listed[name] = rng.uniform(-1, 1, HOUSES)
    renovated = listed.sample(frac=0.3, random_state=seed).copy()
    # .to_numpy(): the sampled rows keep their index, a fresh Series would misalign
    renovation = _stamp(START, rng.uniform(20 * 86400, 70 * 86400, len(renovated)))
    renovated["event_timestamp"] = renovation.to_numpy()
    renovated["age"] = rng.uniform(-1, -0.5, len(renovated))
    structure = pd.concat([listed, renovated], ignore_index=True)

    # location: weekly rows whose scores drift a little
    week = np.repeat(np.arange(WEEKS), HOUSES)
    location = pd.DataFrame(
        {
            "house_id": np.tile(ids, WEEKS),
            "event_timestamp": _stamp(START, week * 7 * 86400 + rng.uniform(0, 86400, len(week))),
        }
    )
    for name in ("distance", "quality"):
        base = np.tile(rng.uniform(-0.9, 0.9, HOUSES), WEEKS)
        location[name] = np.clip(base + rng.normal(0, 0.05, len(week)), -1, 1)

    for frame in (structure, location):
        assert frame["event_timestamp"].notna().all()
    tables = {}
    for stem, frame, features in (
        ("house_structure", structure, ["sqft", "rooms", "age"]),
        ("house_location", location, ["distance", "quality"]),
    ):
        frame = _with_created(frame, rng)
        frame[features] = frame[features].round(4).astype("float32")
        tables[stem] = frame.sort_values(["house_id", "event_timestamp"], ignore_index=True)[
            ["house_id", "event_timestamp", "created", *features]
        ]

    sales = pd.DataFrame(
        {
            "house_id": rng.choice(ids, SALES),
            "event_timestamp": _stamp(START, rng.uniform(10 * 86400, (WEEKS - 1) * 7 * 86400, SALES)),
        }
    )
    known = sales.copy()
    for stem in ("house_structure", "house_location"):
        known = _as_of(known, tables[stem], TTL[stem])
    x = np.stack([known[name].to_numpy("float64") for name in WEIGHTS], axis=1)
    target = x @ np.array(list(WEIGHTS.values())) + 0.5 * x[:, 0] * x[:, 4] + 0.3
    sales["target"] = np.round(target + rng.normal(0, 0.05, SALES), 4)
    tables["house_sales"] = sales
    return tables


def _as_of(events: pd.DataFrame, table: pd.DataFrame, ttl: timedelta) -> pd.DataFrame:
    """For each event, the newest row of ``table`` written by then and at most ``ttl`` old."""
    features = [c for c in table.columns if c not in ("house_id", "event_timestamp", "created")]
    events = events.reset_index(drop=True).rename_axis("_row").reset_index()
    pairs = events.merge(table, on="house_id", suffixes=("", "_f"))
    ok = (
        (pairs["event_timestamp_f"] <= pairs["event_timestamp"])
        & (pairs["event_timestamp_f"] >= pairs["event_timestamp"] - ttl)
        & (pairs["created"] <= pairs["event_timestamp"])
    )
    newest = pairs[ok].sort_values(["_row", "event_timestamp_f", "created"]).groupby("_row").tail(1)
    merged = events.merge(newest[["_row", *features]], on="_row", how="left")
    if merged[features].isna().any().any():
        raise AssertionError("the generator must give every sale a feature value")
    return merged.drop(columns="_row")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="generate the example Feast repository's data")
    parser.add_argument("--check", action="store_true", help="compare with the committed files")
    args = parser.parse_args(argv)
    DATA.mkdir(exist_ok=True)
    status = 0
    for stem, frame in make_tables().items():
        path = DATA / f"{stem}.parquet"
        if args.check:
            same = path.is_file() and pd.read_parquet(path).equals(frame)
            print(f"{path.name}: {'up to date' if same else 'DIFFERS from the generator'}")
            status |= not same
        else:
            frame.to_parquet(path, index=False)
            print(f"wrote {path} ({len(frame)} rows)")
    return status


if __name__ == "__main__":
    sys.exit(main())
