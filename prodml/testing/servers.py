"""Conformance suite of the ``server`` role.

Every model server deploys a stored version, answers V1 predictions that match the
model's own in-process predictions, reports its status truthfully, undeploys, and refuses a
version whose files do not match their manifest. Use it as::

    class TestMyServer(ModelServerConformance):
        @pytest.fixture
        def backend_config(self, tmp_path):
            return {"type": "mine", "port": 0, ...}

The suite trains one tiny model per test class with the ``keras`` trainer and keeps it in a
``local`` store (override :meth:`model_store` to serve from another store). Deployed
servers are always undeployed, also when a test fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from prodml.core.errors import ProdmlError
from prodml.core.interfaces import ModelRef, ModelStore
from prodml.testing.base import BackendConformance

MODEL_NAME = "conformance"


def train_tiny_bundle(
    out_dir: Path, *, frame: Any = None, model_name: str = MODEL_NAME, epochs: int = 1, **schema: Any
) -> Path:
    """Train a small Keras regression model into a bundle at ``out_dir`` (real trainer, seconds).

    ``frame`` holds the features then the label (default: a 3-feature regression frame);
    ``schema`` may add ``feature_refs`` and ``entity_keys`` (as a Feast source would).
    """
    from prodml.core.bundle import frame_fingerprint
    from prodml.core.interfaces import DatasetSchema, TrainSpec
    from prodml.plugins.trainers.keras import KerasTrainer, KerasTrainerConfig
    from prodml.testing.trainers import regression_frame

    frame = regression_frame(rows=64) if frame is None else frame
    columns = [str(c) for c in frame.columns]
    Path(out_dir).parent.mkdir(parents=True, exist_ok=True)
    model_file = Path(out_dir).parent / "tiny_model.py"
    model_file.write_text(TINY_MODEL, encoding="utf-8")
    config = KerasTrainerConfig(type="keras", model=f"{model_file}:build_model", epochs=epochs, seed=7)
    spec = TrainSpec(
        model_name=model_name,
        schema=DatasetSchema(
            feature_names=tuple(columns[:-1]),
            label=columns[-1],
            dtypes={c: str(frame[c].dtype) for c in columns},
            rows=len(frame),
            sha256=frame_fingerprint(frame),
            **schema,
        ),
    )
    return Path(KerasTrainer(config).train(frame, spec, Path(out_dir)).bundle_dir)


TINY_MODEL = """
import keras


def build_model(spec):
    inputs = keras.Input(shape=(spec.input_width,), name="features")
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    outputs = keras.layers.Dense(1, name="prediction")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse")
    return model
"""


def in_process_predictions(bundle_dir: Path, rows: Any) -> Any:
    """What the bundle's model predicts for ``rows`` in this process (the reference)."""
    import numpy as np

    from prodml.plugins.trainers.keras import load_bundle

    model, _ = load_bundle(Path(bundle_dir))
    return np.asarray(model(np.asarray(rows, dtype=np.float32), training=False))


class ModelServerConformance(BackendConformance):
    """What every model server must do for the serve stage."""

    role: ClassVar = "server"

    @pytest.fixture(scope="class")
    def trained_bundle(self, tmp_path_factory: pytest.TempPathFactory) -> Path:
        """One tiny trained bundle per test class."""
        return train_tiny_bundle(tmp_path_factory.mktemp("served") / "bundle")

    @pytest.fixture
    def model_store(self, tmp_path: Path) -> ModelStore:
        """The store the server reads from (a ``local`` store in ``tmp_path``)."""
        from prodml.plugins.stores.local import LocalStore, LocalStoreConfig

        return LocalStore(LocalStoreConfig(type="local", root=tmp_path / "store"))

    @pytest.fixture
    def stored(self, model_store: ModelStore, trained_bundle: Path) -> ModelRef:
        """The trained bundle, pushed as a version of :data:`MODEL_NAME`."""
        return model_store.push(trained_bundle, MODEL_NAME)

    @pytest.fixture
    def deployed(self, backend: Any, stored: ModelRef, model_store: ModelStore) -> Iterator[Any]:
        """The endpoint of ``stored``, undeployed after the test whatever happens."""
        try:
            yield backend.deploy(stored, model_store)
        finally:
            backend.undeploy(MODEL_NAME)

    # -- deploy, predict, status, undeploy ----------------------------------------------

    def test_deployed_model_answers_like_the_model_in_process(
        self, backend: Any, deployed: Any, trained_bundle: Path
    ) -> None:
        import numpy as np

        from prodml.plugins.servers.client import predict, predictions

        rows = [[0.1, -0.4, 2.0], [1.5, 0.0, -3.25], [0.0, 0.0, 0.0]]
        answer = predict(deployed.url, deployed.model_name, rows)
        expected = in_process_predictions(trained_bundle, rows)
        assert np.allclose(np.asarray(predictions(answer), dtype=np.float32), expected, rtol=1e-5, atol=1e-6)
        # the optional ModelServer.predict (a run's sample prediction) agrees, or says it is absent
        try:
            own = backend.predict(deployed, rows)
        except NotImplementedError as exc:
            assert type(backend).__name__ in str(exc)
        else:
            assert np.allclose(np.asarray(own, dtype=np.float32), expected, rtol=1e-5, atol=1e-6)

    def test_status_follows_deploy_and_undeploy(
        self, backend: Any, stored: ModelRef, model_store: ModelStore
    ) -> None:
        assert not backend.status(MODEL_NAME).ready
        try:
            endpoint = backend.deploy(stored, model_store)
            assert endpoint.version == stored.version
            status = backend.status(MODEL_NAME)
            assert status.ready and status.url
        finally:
            backend.undeploy(MODEL_NAME)
        assert not backend.status(MODEL_NAME).ready
        backend.undeploy(MODEL_NAME)  # undeploying twice is harmless

    def test_tampered_version_is_never_served(
        self, backend: Any, stored: ModelRef, model_store: ModelStore, tmp_path: Path
    ) -> None:
        from urllib.parse import urlparse

        version_dir = Path(urlparse(model_store.uri(stored)).path)
        if not version_dir.is_dir():
            pytest.skip("this store keeps versions outside the filesystem; tamper test needs a local store")
        target = version_dir / "model.keras"
        target.write_bytes(target.read_bytes() + b"tampered")
        try:
            with pytest.raises(ProdmlError):
                backend.deploy(stored, model_store)
            assert not backend.status(MODEL_NAME).ready
        finally:
            backend.undeploy(MODEL_NAME)
