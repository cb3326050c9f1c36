"""The keras trainer on frames from the real sources, through the runner's fetch and train stages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from prodml.core.bundle import SAVED_MODEL_DIR, BundleMetadata
from prodml.core.config import load_config
from prodml.core.interfaces import DatasetSchema
from prodml.plugins.trainers.keras import load_bundle
from prodml.runner import stages

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def fetch_and_train(config_file: Path, work: Path) -> tuple[Path, DatasetSchema]:
    config = load_config(config_file)
    schema = stages.fetch(config, work / "dataset")
    stages.train(config, work / "dataset", work / "bundle")
    return work / "bundle", schema


def assert_both_loaders_agree(bundle: Path, schema: DatasetSchema) -> BundleMetadata:
    import pandas as pd
    import tensorflow as tf

    model, meta = load_bundle(bundle)
    frame = pd.read_parquet(bundle.parent / "dataset" / "dataset.parquet")
    rows = frame[list(schema.feature_names)].to_numpy(dtype=np.float32)[:32]
    signature = tf.saved_model.load(str(bundle / SAVED_MODEL_DIR / "1")).signatures["serving_default"]
    np.testing.assert_allclose(
        signature(features=tf.constant(rows))["prediction"].numpy(),
        np.asarray(model(rows, training=False)),
        rtol=1e-5,
        atol=1e-6,
    )
    assert meta.feature_names == list(schema.feature_names)
    # the bundle fingerprints the same frame the fetch stage described
    assert meta.training_data == {"rows": schema.rows, "sha256": schema.sha256}
    return meta


def test_csv_quickstart(tmp_path: Path) -> None:
    config = tmp_path / "prodml.yaml"
    config.write_text(
        "project: quickstart\nstages: [fetch, train]\n"
        f"source: {{type: csv, path: {REPO}/examples/quickstart/data/train.csv, label: target}}\n"
        f"trainer: {{type: keras, model: {REPO}/examples/quickstart/model.py:build_model, epochs: 3}}\n"
    )
    bundle, schema = fetch_and_train(config, tmp_path)
    meta = assert_both_loaders_agree(bundle, schema)
    assert meta.feature_refs == [] and meta.label == "target"
    assert meta.config_digest == load_config(config).model_digest()


@pytest.mark.feast
def test_feast_quickstart(tmp_path: Path, copy_feast_example) -> None:
    copy_feast_example(tmp_path / "feast_repo")
    config = tmp_path / "prodml.yaml"
    config.write_text(
        "project: quickstart-feast\nstages: [fetch, train]\n"
        "source: {type: feast, repo_path: feast_repo, feature_service: house_price_model,\n"
        "         entity_df: feast_repo/data/house_sales.parquet, label: target}\n"
        f"trainer: {{type: keras, model: {REPO}/examples/quickstart/model.py:build_model, epochs: 2}}\n"
    )
    bundle, schema = fetch_and_train(config, tmp_path)
    meta = assert_both_loaders_agree(bundle, schema)
    assert meta.feature_refs == list(schema.feature_refs) and meta.feature_refs
    assert meta.entity_keys == list(schema.entity_keys) == ["house_id"]
