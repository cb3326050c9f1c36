"""Batch scoring end to end: `prodml predict --entities F -o OUT` on the example Feast repository.

A model is trained on the example's training frame and pushed to a local store; the CLI then
scores a file of entity rows (the training events without their label, an unknown house, a
repeated row, an extra column) with the features as of each row's time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.feast, pytest.mark.slow]

feast = pytest.importorskip("feast")
pytest.importorskip("tensorflow")

CONFIG = """\
project: houses
stages: [fetch]
source: {type: feast, repo_path: feast_repo, feature_service: house_price_model,
         entity_df: feast_repo/data/house_sales.parquet, label: target, materialize: false}
store: {type: local, root: store}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, copy_feast_example) -> dict:
    from prodml.core.config import load_config
    from prodml.core.plugins import default_registry
    from prodml.testing.servers import train_tiny_bundle

    tmp = tmp_path_factory.mktemp("batch")
    repo = copy_feast_example(tmp / "feast_repo")
    config_file = tmp / "prodml.yaml"
    config_file.write_text(CONFIG)
    config = load_config(config_file)
    registry = default_registry()
    source = registry.create("source", config.source)
    frame = source.training_frame()
    schema = source.schema(frame)
    bundle = train_tiny_bundle(
        tmp / "trained" / "bundle",
        frame=frame,
        model_name="houses",
        feature_refs=schema.feature_refs,
        entity_keys=schema.entity_keys,
    )
    ref = registry.create("store", config.store).push(bundle, "houses")
    return {"tmp": tmp, "repo": repo, "config": config_file, "frame": frame, "bundle": bundle, "ref": ref}


def test_predict_entities_writes_every_row_with_its_prediction(trained: dict) -> None:
    from prodml.cli import main
    from prodml.plugins.trainers.keras import load_bundle

    tmp, repo = trained["tmp"], trained["repo"]
    sales = pd.read_parquet(repo / "data" / "house_sales.parquet").drop(columns="target")
    unknown = sales.iloc[[0]].assign(house_id=999_999)
    entities = pd.concat([sales, unknown, sales.iloc[[5]]], ignore_index=True)
    entities["note"] = [f"row {i}" for i in range(len(entities))]
    entities.to_parquet(tmp / "entities.parquet", index=False)
    out = tmp / "out" / "scored.parquet"

    status = main(
        ["predict", "-c", str(trained["config"]), "--entities", str(tmp / "entities.parquet"), "-o", str(out)]
    )
    assert status == 0
    scored = pd.read_parquet(out)
    # every entity row, in order, with all its columns, and one prediction each
    assert list(scored.columns) == [*entities.columns, "prediction"]
    assert scored["note"].tolist() == entities["note"].tolist()
    assert scored["house_id"].tolist() == entities["house_id"].tolist()
    # the sales rows are the training events: their features as of their time are the
    # training frame's, so the predictions are the model's on that frame
    model, metadata = load_bundle(trained["bundle"])
    features = trained["frame"][metadata.feature_names].to_numpy("float32")
    want = np.asarray(model(features, training=False)).reshape(-1)
    n = len(sales)
    np.testing.assert_allclose(scored["prediction"].to_numpy()[:n], want, rtol=1e-6)
    assert np.isnan(scored["prediction"].iloc[n]), "an unknown house has no features: null prediction"
    assert scored["prediction"].iloc[n + 1] == pytest.approx(want[5], rel=1e-6)


def test_predict_entities_needs_an_output(trained: dict, capsys: pytest.CaptureFixture) -> None:
    from prodml.cli import main

    status = main(["predict", "-c", str(trained["config"]), "--entities", "whatever.parquet"])
    assert status == 2
    assert "--entities needs -o OUT" in capsys.readouterr().err


def test_predict_entities_names_a_missing_join_key(trained: dict, capsys: pytest.CaptureFixture) -> None:
    from prodml.cli import main

    tmp = trained["tmp"]
    pd.DataFrame({"event_timestamp": [pd.Timestamp("2024-02-01", tz="UTC")]}).to_parquet(
        tmp / "nokey.parquet"
    )
    status = main(
        [
            "predict",
            "-c",
            str(trained["config"]),
            "--entities",
            str(tmp / "nokey.parquet"),
            "-o",
            str(tmp / "x.parquet"),
        ]
    )
    assert status == 1
    assert "no join key column 'house_id'" in capsys.readouterr().err
