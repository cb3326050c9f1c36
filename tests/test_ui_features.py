"""The dashboard's Features page over the example Feast repository (local provider, real Feast)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from starlette.testclient import TestClient

from prodml.core.config import load_config
from prodml.ui.app import create_app
from prodml.ui.data import Project

pytestmark = [pytest.mark.feast, pytest.mark.slow]


@pytest.fixture(scope="module")
def feast_project(tmp_path_factory: pytest.TempPathFactory, copy_feast_example) -> Project:
    tmp = tmp_path_factory.mktemp("ui_feast")
    copy_feast_example(tmp / "feast_repo")
    config_file = tmp / "prodml.yaml"
    config_file.write_text(
        "project: houses\nstages: [fetch]\n"
        "source: {type: feast, repo_path: feast_repo, feature_service: house_price_model,\n"
        "         entity_df: feast_repo/data/house_sales.parquet, label: target}\n"
        "store: {type: local, root: store}\n"
        "server: {type: kserve, mode: local, port: 0, feature_lookup: true, state_dir: state}\n"
    )
    return Project(load_config(config_file))


@pytest.fixture(scope="module")
def feast_served(feast_project: Project, tmp_path_factory: pytest.TempPathFactory):
    """A tiny model trained on the Feast frame, stored, and served with feature lookup."""
    from prodml.testing.servers import train_tiny_bundle

    source = feast_project.source
    frame = source.training_frame()  # also fills the online store
    schema = source.schema(frame)
    bundle = train_tiny_bundle(
        tmp_path_factory.mktemp("ui_feast_bundle") / "bundle",
        frame=frame,
        model_name="houses",
        feature_refs=schema.feature_refs,
        entity_keys=schema.entity_keys,
    )
    ref = feast_project.store.push(bundle, "houses")
    server = feast_project.registry.create("server", feast_project.config.server)
    server.deploy(ref, feast_project.store, source)
    try:
        yield bundle, schema
    finally:
        server.undeploy("houses")


def test_feature_views_ttls_and_the_models_features(feast_project: Project) -> None:
    assert feast_project.has_feature_store()
    views = {v["name"]: v for v in feast_project.feature_views()}
    assert set(views) == {"house_structure", "house_location"}
    assert views["house_structure"]["ttl_seconds"] == 365 * 86400
    assert views["house_location"]["ttl_seconds"] == 30 * 86400
    assert views["house_location"]["entities"] == ["house_id"]
    used = {f"{name}:{f['name']}" for name, v in views.items() for f in v["features"] if f["used"]}
    assert used == set(feast_project.source.feature_refs)


def test_online_values_of_one_entity(feast_project: Project, tmp_path: Path) -> None:
    repo = Path(feast_project.config.source.repo_path)
    house = int(pd.read_parquet(repo / "data" / "house_sales.parquet")["house_id"].iloc[0])
    values = feast_project.online_values({"house_id": house})
    # the same lookup straight through Feast's own API
    direct = feast_project.source.store.get_online_features(
        features=feast_project.source.feature_refs, entity_rows=[{"house_id": house}]
    ).to_dict()
    assert values["house_id"] == house
    for name in feast_project.source.feature_names:
        assert values[name] == pytest.approx(direct[name][0])
    app = create_app(feast_project, token="t")
    with TestClient(app, base_url="http://127.0.0.1:8765") as client:
        page = client.get(f"/features?house_id={house}")
        assert page.status_code == 200
        assert "house_location" in page.text
        assert "TTL 30 d" in page.text and "TTL 365 d" in page.text
        assert f"{values['sqft']:.6g}" in page.text
        unknown = client.get("/features?house_id=987654321")
        assert unknown.status_code == 200 and "the online store has no" in unknown.text


def test_try_it_takes_entity_keys_for_a_feature_lookup_model(feast_project: Project, feast_served) -> None:
    from prodml.testing.servers import in_process_predictions

    bundle, schema = feast_served
    (key,) = schema.entity_keys
    repo = Path(feast_project.config.source.repo_path)
    house = int(pd.read_parquet(repo / "data" / "house_sales.parquet")[key].iloc[1])
    online = feast_project.source.online_features([{key: house}])[list(schema.feature_names)]
    (expected,) = in_process_predictions(bundle, online.to_numpy(dtype="float32"))
    app = create_app(feast_project, token="t")
    with TestClient(app, base_url="http://127.0.0.1:8765") as client:
        page = client.get("/endpoints").text
        assert f'name="f_{key}"' in page and 'name="f_sqft"' not in page  # the form asks for the key
        assert "entity keys" in page
        for protocol in ("v1", "v2"):
            answer = client.post(
                "/endpoints/houses/try", data={"token": "t", f"f_{key}": str(house), "protocol": protocol}
            )
            assert answer.status_code == 200
            shown = re.search(r'class="prediction">\[([^\]]+)\]<', answer.text)
            assert shown is not None, answer.text[-2000:]
            assert float(shown.group(1)) == pytest.approx(float(expected[0]), rel=1e-4, abs=1e-5), protocol
