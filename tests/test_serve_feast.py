"""Feature lookup at inference: requests carrying only entity keys, against the example Feast repo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prodml.testing.sdk import needs_sdk

pytestmark = [pytest.mark.slow, pytest.mark.feast, pytest.mark.kserve]

feast = needs_sdk("feast", extra="feast")
needs_sdk("kserve", extra="kserve")
needs_sdk("tensorflow", extra="tensorflow")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def feast_served(tmp_path_factory: pytest.TempPathFactory, copy_feast_example) -> Any:
    import pandas as pd

    from prodml.core.config import load_config
    from prodml.core.plugins import Registry
    from prodml.plugins.servers.kserve import KServeServer, KServeServerConfig
    from prodml.plugins.stores.local import LocalStore, LocalStoreConfig
    from prodml.testing.servers import train_tiny_bundle

    tmp = tmp_path_factory.mktemp("feast_serve")
    repo = copy_feast_example(tmp / "feast_repo")
    config_file = tmp / "prodml.yaml"
    config_file.write_text(
        "project: houses\nstages: [fetch]\n"
        "source: {type: feast, repo_path: feast_repo, feature_service: house_price_model,\n"
        "         entity_df: feast_repo/data/house_sales.parquet, label: target}\n"
    )
    config = load_config(config_file, registry=Registry(autoload=False))
    source = Registry(autoload=False).create("source", config.source)
    frame = source.training_frame()  # also materializes the online store
    schema = source.schema(frame)
    bundle = train_tiny_bundle(
        tmp / "trained" / "bundle",
        frame=frame,
        model_name="houses",
        feature_refs=schema.feature_refs,
        entity_keys=schema.entity_keys,
    )
    store = LocalStore(LocalStoreConfig(type="local", root=tmp / "store"))
    ref = store.push(bundle, "houses")
    server = KServeServer(
        KServeServerConfig(type="kserve", port=0, feature_lookup=True, state_dir=tmp / "state")
    )
    endpoint = server.deploy(ref, store, source)
    ids = pd.read_parquet(repo / "data" / "house_sales.parquet")[schema.entity_keys[0]].drop_duplicates()
    try:
        yield endpoint, source, bundle, schema, [int(i) for i in ids.head(3)]
    finally:
        server.undeploy("houses")


def test_entity_keys_are_looked_up_and_predicted(feast_served: Any) -> None:
    from prodml.plugins.servers import client
    from prodml.testing.servers import in_process_predictions

    endpoint, source, bundle, schema, ids = feast_served
    key = schema.entity_keys[0]
    rows = [{key: i} for i in ids]
    online = source.online_features(rows)[list(schema.feature_names)].to_numpy(dtype=np.float32)
    expected = in_process_predictions(bundle, online)

    v1 = client.predictions(client.predict(endpoint.url, "houses", rows))
    np.testing.assert_allclose(np.asarray(v1, dtype=np.float32), expected, rtol=1e-4, atol=1e-5)
    v2 = client.predictions(client.predict(endpoint.url, "houses", rows, protocol="v2"))
    np.testing.assert_allclose(np.asarray(v2, dtype=np.float32), expected, rtol=1e-4, atol=1e-5)
    # features given directly still work beside lookups
    direct = [dict(zip(schema.feature_names, map(float, r), strict=True)) for r in online]
    v1_direct = client.predictions(client.predict(endpoint.url, "houses", direct))
    np.testing.assert_allclose(np.asarray(v1_direct, dtype=np.float32), expected, rtol=1e-4, atol=1e-5)


def test_unknown_entity_is_404_naming_the_key(feast_served: Any) -> None:
    from prodml.plugins.servers import client

    endpoint, _source, _bundle, schema, ids = feast_served
    key = schema.entity_keys[0]
    with pytest.raises(client.PredictionError) as caught:
        client.predict(endpoint.url, "houses", [{key: ids[0]}, {key: 987654321}])
    assert caught.value.status == 404
    assert "987654321" in caught.value.reason and key in caught.value.reason
    with pytest.raises(client.PredictionError) as wrong_key:
        client.predict(endpoint.url, "houses", [{"no_such_key": 1}])
    assert wrong_key.value.status == 400 and key in wrong_key.value.reason
    assert json.loads(json.dumps(client.call(f"{endpoint.url}/v2/health/ready"))) == {"ready": True}


def test_an_entity_with_some_features_missing_is_refused_naming_one(feast_served: Any) -> None:
    import pandas as pd

    from prodml.plugins.servers import client

    endpoint, source, _bundle, schema, ids = feast_served
    key = schema.entity_keys[0]
    # an entity known to one feature view only: its location is online, its structure is not
    now = pd.Timestamp.now(tz="UTC")
    partial = pd.DataFrame(
        {key: [555_555], "distance": [1.5], "quality": [0.5], "event_timestamp": [now], "created": [now]}
    )
    source.store.write_to_online_store("house_location", partial)
    with pytest.raises(client.PredictionError) as caught:
        client.predict(endpoint.url, "houses", [{key: ids[0]}, {key: 555_555}])
    # docs/serving.md: an entity the store knows only partly is 422, naming it and the
    # features it lacks (not those it has)
    assert caught.value.status == 422
    reason = caught.value.reason
    assert "555555" in reason and "'sqft'" in reason, reason
    assert "distance" not in reason and "quality" not in reason
    # an unknown entity in the same request makes it a 404: nothing is known about it
    with pytest.raises(client.PredictionError) as unknown:
        client.predict(endpoint.url, "houses", [{key: 555_555}, {key: 987_654_321}])
    assert unknown.value.status == 404 and "987654321" in unknown.value.reason
    # the server keeps answering complete entities
    assert len(client.predictions(client.predict(endpoint.url, "houses", [{key: ids[0]}]))) == 1


def test_a_source_with_other_feature_refs_is_refused_at_load(feast_served: Any, tmp_path: Path) -> None:
    from prodml.core.errors import ServingError
    from prodml.plugins.servers.kserve import KServeServer, KServeServerConfig
    from prodml.plugins.sources.feast import FeastSource, FeastSourceConfig
    from prodml.plugins.stores.local import LocalStore, LocalStoreConfig

    _endpoint, source, bundle, schema, _ids = feast_served
    reordered = list(reversed(schema.feature_refs))  # the same features, in another order
    other = FeastSource(
        FeastSourceConfig.model_validate(
            {**source.config.model_dump(), "feature_service": None, "features": reordered}
        )
    )
    store = LocalStore(LocalStoreConfig(type="local", root=tmp_path / "store"))
    ref = store.push(bundle, "houses")
    server = KServeServer(
        KServeServerConfig(type="kserve", port=0, feature_lookup=True, state_dir=tmp_path / "state")
    )
    try:
        with pytest.raises(ServingError, match="could not load the model") as caught:
            server.deploy(ref, store, other)
        assert "differ from the ones the model was trained on" in str(caught.value)
    finally:
        server.undeploy("houses")
    assert server.status("houses").ready is False
