"""Feast definitions of the example: one entity (a house), two feature views, one service.

``house_structure`` changes rarely (renovations); ``house_location`` is recomputed weekly and
goes stale after 30 days (its TTL). Both sources carry a ``created`` column, the time a row
was written, so prodml can refuse values written after a training example's timestamp.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float32

house = Entity(
    name="house", join_keys=["house_id"], value_type=ValueType.INT64, description="a house for sale"
)

house_structure_source = FileSource(
    name="house_structure_source",
    path="data/house_structure.parquet",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
)

house_location_source = FileSource(
    name="house_location_source",
    path="data/house_location.parquet",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
)

house_structure = FeatureView(
    name="house_structure",
    entities=[house],
    ttl=timedelta(days=365),
    schema=[
        Field(name="sqft", dtype=Float32),
        Field(name="rooms", dtype=Float32),
        Field(name="age", dtype=Float32),
    ],
    source=house_structure_source,
    online=True,
    description="size and age of the building",
)

house_location = FeatureView(
    name="house_location",
    entities=[house],
    ttl=timedelta(days=30),
    schema=[Field(name="distance", dtype=Float32), Field(name="quality", dtype=Float32)],
    source=house_location_source,
    online=True,
    description="weekly neighbourhood scores",
)

house_price_model = FeatureService(name="house_price_model", features=[house_structure, house_location])
