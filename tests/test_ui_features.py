"""The dashboard's Features page over the example Feast repository (local provider, real Feast)."""

from __future__ import annotations

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
    )
    return Project(load_config(config_file))


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
