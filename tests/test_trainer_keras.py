"""The ``keras`` trainer: real TensorFlow training on small frames, real bundles, real loaders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prodml.core.bundle import SAVED_MODEL_DIR, BundleMetadata, verify_bundle
from prodml.core.errors import BundleError, DataError, TrainingError
from prodml.core.interfaces import DatasetSchema, TrainSpec
from prodml.plugins.trainers.keras import KerasTrainer, KerasTrainerConfig, ModelSpec, load_bundle
from prodml.testing.sdk import needs_sdk
from prodml.testing.trainers import TrainerConformance, regression_frame

needs_sdk("tensorflow", extra="tensorflow")

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "quickstart" / "model.py"
CUSTOM_TRAIN_EXAMPLE = REPO / "examples" / "quickstart" / "model_custom_train.py"

pytestmark = pytest.mark.slow


# -- helpers -------------------------------------------------------------------------------


def spec_for(frame: Any, name: str = "test-model") -> TrainSpec:
    columns = list(frame.columns)
    return TrainSpec(
        model_name=name,
        schema=DatasetSchema(feature_names=tuple(columns[:-1]), label=columns[-1]),
        config_digest="ab" * 32,
    )


def trainer(model: str | Path, base_dir: Path | None = None, **settings: Any) -> KerasTrainer:
    data = {"type": "keras", "model": str(model), "epochs": 2, **settings}
    config = KerasTrainerConfig.model_validate(data, context={"base_dir": base_dir or Path.cwd()})
    return KerasTrainer(config)


def model_file(folder: Path, body: str, name: str = "model.py") -> Path:
    path = folder / name
    path.write_text("import keras\nimport numpy as np\n\n" + textwrap.dedent(body), encoding="utf-8")
    return path


def predict_keras(bundle: Path, rows: np.ndarray, **kwargs: Any) -> np.ndarray:
    model, _ = load_bundle(bundle, **kwargs)
    return np.asarray(model(rows, training=False))


def predict_saved_model(bundle: Path, rows: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(bundle / SAVED_MODEL_DIR / "1"))
    return loaded.signatures["serving_default"](features=tf.constant(rows))["prediction"].numpy()


def feature_rows(frame: Any, n: int = 20) -> np.ndarray:
    return frame.iloc[:n, :-1].to_numpy(dtype=np.float32)


DENSE_MODEL = """
def build_model(spec):
    inputs = keras.Input(shape=(spec.input_width,))
    outputs = keras.layers.Dense(1)(keras.layers.Dense(8, activation="relu")(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse")
    return model
"""


@pytest.fixture(scope="module")
def frame() -> Any:
    return regression_frame(rows=80)


@pytest.fixture(scope="module")
def example_bundle(frame: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The worked example trained once for the read-only tests of this module."""
    out = tmp_path_factory.mktemp("example") / "bundle"
    trainer(EXAMPLE, epochs=3).train(frame, spec_for(frame), out)
    return out


# -- conformance ---------------------------------------------------------------------------


class TestKerasTrainer(TrainerConformance):
    @pytest.fixture
    def backend_config(self) -> dict[str, Any]:
        return {"type": "keras", "model": f"{EXAMPLE}:build_model", "epochs": 2, "seed": 3}


# -- config --------------------------------------------------------------------------------


class TestConfig:
    def test_model_path_resolves_against_the_config_folder(self, tmp_path: Path) -> None:
        config = KerasTrainerConfig.model_validate(
            {"type": "keras", "model": "code/model.py:make"}, context={"base_dir": tmp_path}
        )
        assert config.model_path == tmp_path / "code" / "model.py"
        assert config.model_function == "make"

    def test_function_is_optional(self, tmp_path: Path) -> None:
        config = KerasTrainerConfig.model_validate(
            {"type": "keras", "model": "model.py"}, context={"base_dir": tmp_path}
        )
        assert config.model_path == tmp_path / "model.py"
        assert config.model_function is None

    @pytest.mark.parametrize(
        ("value", "message"),
        [("model.txt:build", "must name a Python file"), ("model.py:2fast", "not a Python function name")],
    )
    def test_bad_model_reference(self, value: str, message: str) -> None:
        from pydantic import ValidationError

        with pytest.raises(ValidationError, match=message):
            KerasTrainerConfig.model_validate({"type": "keras", "model": value})

    def test_whole_config_uses_the_config_folder(self, tmp_path: Path) -> None:
        from prodml.core.config import load_config

        (tmp_path / "cfg").mkdir()
        path = tmp_path / "cfg" / "prodml.yaml"
        path.write_text(
            "project: demo\nstages: [train]\n"
            "trainer: {type: keras, model: ../code/m.py:build_model, params: {units: 4}}\n"
        )
        config = load_config(path)
        assert config.trainer.model_path == tmp_path / "code" / "m.py"
        assert config.trainer.params == {"units": 4}

    def test_module_imports_no_tensorflow(self) -> None:
        code = (
            "import sys, prodml.plugins.trainers.keras\n"
            "print(sorted(m for m in ('tensorflow', 'keras', 'pandas') if m in sys.modules))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "[]"


# -- the bundle both loaders accept -------------------------------------------------------


def test_keras_and_saved_model_predict_the_same(example_bundle: Path, frame: Any) -> None:
    rows = feature_rows(frame)
    from_keras = predict_keras(example_bundle, rows)
    from_saved_model = predict_saved_model(example_bundle, rows)
    assert from_keras.shape == (20, 1)
    np.testing.assert_allclose(from_saved_model, from_keras, rtol=1e-5, atol=1e-6)


def test_saved_model_signature_is_named_for_tf_serving(example_bundle: Path) -> None:
    import tensorflow as tf

    signature = tf.saved_model.load(str(example_bundle / SAVED_MODEL_DIR / "1")).signatures["serving_default"]
    _, inputs = signature.structured_input_signature
    assert list(inputs) == ["features"]
    assert inputs["features"].shape.as_list() == [None, 3]
    assert list(signature.structured_outputs) == ["prediction"]


def test_metadata_records_versions_and_settings(example_bundle: Path) -> None:
    meta = BundleMetadata.read(example_bundle)
    assert set(meta.versions) >= {"prodml", "tensorflow", "keras", "python"}
    assert meta.features[0].dtype == "float64"
    assert meta.extra["seed"] == 42 and meta.extra["epochs"] == 3
    assert meta.extra["contract"] == "build_model(spec)"
    assert {"loss", "mae", "val_loss", "val_mae"} <= set(meta.metrics)


def test_the_example_learns(frame: Any, tmp_path: Path) -> None:
    result = trainer(EXAMPLE, epochs=30, validation_split=0.25).train(frame, spec_for(frame), tmp_path / "b")
    # the label is a linear mix with unit-scale weights: an untrained model is off by ~1
    assert result.metrics["val_mae"] < 0.5


# -- reproducibility -----------------------------------------------------------------------


def test_same_seed_same_predictions_other_seed_differs(frame: Any, tmp_path: Path) -> None:
    rows = feature_rows(frame)
    predictions = {}
    for run, seed in (("a", 7), ("b", 7), ("c", 8)):
        trainer(EXAMPLE, seed=seed).train(frame, spec_for(frame), tmp_path / run)
        predictions[run] = predict_keras(tmp_path / run, rows)
    np.testing.assert_array_equal(predictions["a"], predictions["b"])
    assert not np.allclose(predictions["a"], predictions["c"])


# -- loading: tampering and code ----------------------------------------------------------


@pytest.mark.parametrize("victim", ["prodml.json", "model.keras", "saved_model/1/saved_model.pb"])
def test_tampered_bundle_is_refused(example_bundle: Path, tmp_path: Path, victim: str) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(example_bundle, copy)
    with open(copy / victim, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match=f"changed {victim}"):
        load_bundle(copy)


def test_unlisted_file_is_refused(example_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(example_bundle, copy)
    (copy / "extra.py").write_text("print('hi')\n")
    with pytest.raises(BundleError, match=r"unlisted extra\.py"):
        load_bundle(copy)


def test_missing_bundle_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nothing")


LAMBDA_MODEL = """
def build_model(spec):
    inputs = keras.Input(shape=(spec.input_width,))
    doubled = keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(doubled))
    model.compile(optimizer="adam", loss="mse")
    return model
"""


def test_lambda_model_needs_trust_to_train(frame: Any, tmp_path: Path) -> None:
    path = model_file(tmp_path, LAMBDA_MODEL)
    with pytest.raises(TrainingError, match=r"(?s)Lambda layer 'double'.*trust_model_code") as info:
        trainer(path).train(frame, spec_for(frame), tmp_path / "bundle")
    assert "safe mode" in str(info.value)
    assert not (tmp_path / "bundle").exists()


def test_lambda_bundle_is_refused_without_trust_and_loads_with_it(frame: Any, tmp_path: Path) -> None:
    path = model_file(tmp_path, LAMBDA_MODEL)
    bundle = tmp_path / "bundle"
    trainer(path, trust_model_code=True).train(frame, spec_for(frame), bundle)
    assert BundleMetadata.read(bundle).extra["custom_code"] == ["Lambda layer 'double'"]
    with pytest.raises(BundleError, match=r"arbitrary Python code \(Lambda layer 'double'\)"):
        load_bundle(bundle)
    rows = feature_rows(frame)
    np.testing.assert_allclose(
        predict_keras(bundle, rows, trust_model_code=True), predict_saved_model(bundle, rows), rtol=1e-5
    )


CUSTOM_LAYER_MODEL = """
class Scale(keras.layers.Layer):
    def __init__(self, factor=3.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, inputs):
        return inputs * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def build_model(spec):
    inputs = keras.Input(shape=(spec.input_width,))
    model = keras.Model(inputs, keras.layers.Dense(1)(Scale(name="scale")(inputs)))
    model.compile(optimizer="adam", loss="mse")
    return model
"""


def test_custom_layer_travels_in_the_bundle_when_trusted(frame: Any, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    path = model_file(tmp_path / "src", CUSTOM_LAYER_MODEL)
    bundle = tmp_path / "bundle"
    trainer(path, trust_model_code=True).train(frame, spec_for(frame), bundle)
    meta = BundleMetadata.read(bundle)
    assert meta.extra["custom_code"] == ["Scale from the model file (model.py)"]
    assert any(name.startswith("code/") for name in verify_bundle(bundle))
    with pytest.raises(BundleError, match="Scale"):
        load_bundle(bundle)
    # a fresh process, without the source file: the code kept in the bundle is what runs
    shutil.rmtree(tmp_path / "src")
    rows = feature_rows(frame, 4)
    script = (
        "import sys, json, numpy as np\n"
        "from prodml.plugins.trainers.keras import load_bundle\n"
        "model, _ = load_bundle(sys.argv[1], trust_model_code=True)\n"
        "print(json.dumps(np.asarray(model(np.array(json.loads(sys.argv[2]), 'float32'))).tolist()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(bundle), json.dumps(rows.tolist())],
        capture_output=True,
        text=True,
        check=True,
    )
    got = np.array(json.loads(out.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(got, predict_saved_model(bundle, rows), rtol=1e-5)


# -- the alternative contract: train(frame, spec) ------------------------------------------


def test_custom_train_function(frame: Any, tmp_path: Path) -> None:
    result = trainer(f"{CUSTOM_TRAIN_EXAMPLE}:train", epochs=3).train(frame, spec_for(frame), tmp_path / "b")
    meta = BundleMetadata.read(tmp_path / "b")
    assert meta.extra["contract"] == "train(frame, spec)"
    assert {"loss", "val_loss"} <= set(result.metrics)
    rows = feature_rows(frame)
    np.testing.assert_allclose(predict_keras(tmp_path / "b", rows), predict_saved_model(tmp_path / "b", rows))


def test_default_function_lookup_finds_train(frame: Any, tmp_path: Path) -> None:
    shutil.copy(CUSTOM_TRAIN_EXAMPLE, tmp_path / "only_train.py")
    trainer(tmp_path / "only_train.py", epochs=1).train(frame, spec_for(frame), tmp_path / "b")
    assert BundleMetadata.read(tmp_path / "b").extra["model_code"] == "only_train.py:train"


def test_spec_carries_the_task(frame: Any, tmp_path: Path) -> None:
    path = model_file(
        tmp_path,
        """
        SEEN = []

        def build_model(spec):
            SEEN.append(spec)
            inputs = keras.Input(shape=(spec.input_width,))
            model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
            model.compile(optimizer="sgd", loss="mse")
            return model
        """,
    )
    trainer(path, params={"units": 5}, validation_split=0.25).train(frame, spec_for(frame), tmp_path / "b")
    seen = [m for m in sys.modules.values() if getattr(m, "__file__", None) == str(path)]
    spec: ModelSpec = seen[0].SEEN[-1]
    assert spec.feature_names == ("x0", "x1", "x2") and spec.input_width == 3 and spec.label == "target"
    assert spec.params == {"units": 5}
    with pytest.raises(TypeError):
        spec.params["units"] = 6  # read-only
    train_rows = frame.iloc[:60, :-1].to_numpy()
    np.testing.assert_allclose(spec.feature_mean, train_rows.mean(axis=0))
    np.testing.assert_allclose(spec.feature_variance, train_rows.var(axis=0))


# -- bad input -> clear error, nothing written ---------------------------------------------


def assert_nothing_written(folder: Path) -> None:
    leftovers = [p.name for p in folder.iterdir() if not p.name.endswith(".py")]
    assert leftovers == [], f"left behind: {leftovers}"


def test_missing_model_file_names_the_path(frame: Any, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=f"not found: {tmp_path / 'nope.py'}"):
        trainer("nope.py:build_model", base_dir=tmp_path).train(frame, spec_for(frame), tmp_path / "b")
    assert_nothing_written(tmp_path)


def test_missing_function_lists_the_defined_ones(frame: Any, tmp_path: Path) -> None:
    path = model_file(tmp_path, DENSE_MODEL)
    with pytest.raises(TrainingError, match=r"has no function 'make_model'.*defined there: build_model"):
        trainer(f"{path}:make_model").train(frame, spec_for(frame), tmp_path / "b")
    assert_nothing_written(tmp_path)


def test_import_error_names_the_line(frame: Any, tmp_path: Path) -> None:
    path = model_file(tmp_path, "import not_a_module_anywhere\n")
    with pytest.raises(TrainingError, match=r"importing model code .*ModuleNotFoundError.*line 4"):
        trainer(path).train(frame, spec_for(frame), tmp_path / "b")


def test_user_exception_names_the_line(frame: Any, tmp_path: Path) -> None:
    path = model_file(tmp_path, "def build_model(spec):\n    return spec.params['units']\n")
    expected = r"build_model\(\) in .* raised KeyError: 'units' \(model.py line 5\)"
    with pytest.raises(TrainingError, match=expected):
        trainer(path).train(frame, spec_for(frame), tmp_path / "b")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("def build_model(spec):\n    return 42\n", "returned int, not a keras.Model"),
        (
            "def build_model(spec):\n"
            "    return keras.Sequential([keras.Input((spec.input_width,)), keras.layers.Dense(1)])\n",
            "not compiled",
        ),
        (
            "def build_model(spec):\n"
            "    m = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)])\n"
            "    m.compile(optimizer='adam', loss='mse')\n"
            "    return m\n",
            r"takes inputs of shape \(None, 5\), but the data has 3 features",
        ),
        (
            "def build_model(spec):\n"
            "    m = keras.Sequential([keras.Input((spec.input_width,)), keras.layers.Dense(1),"
            " keras.layers.Flatten(), keras.layers.Reshape(())])\n"
            "    m.compile(optimizer='adam', loss='mse')\n"
            "    return m\n",
            r"returns shape \(2,\)",
        ),
        ("def build_model(a, b, c):\n    pass\n", "takes 3 required arguments"),
    ],
    ids=["not-a-model", "uncompiled", "input-width", "output-rank", "signature"],
)
def test_unusable_model_function(frame: Any, tmp_path: Path, body: str, message: str) -> None:
    path = model_file(tmp_path, body)
    with pytest.raises(TrainingError, match=message):
        trainer(path).train(frame, spec_for(frame), tmp_path / "b")
    assert_nothing_written(tmp_path)


def test_label_must_be_numeric(frame: Any, tmp_path: Path) -> None:
    bad = frame.assign(target=np.where(frame["target"] > 0, "high", "low"))
    with pytest.raises(DataError, match=r"label column 'target' \(object\) not numeric") as info:
        trainer(EXAMPLE).train(bad, spec_for(bad), tmp_path / "b")
    assert "integers 0..k-1" in str(info.value)
    assert_nothing_written(tmp_path)


def test_feature_must_be_numeric(frame: Any, tmp_path: Path) -> None:
    bad = frame.assign(x1=frame["x1"].astype(str))
    with pytest.raises(DataError, match=r"feature column 'x1' \(object\) not numeric"):
        trainer(EXAMPLE).train(bad, spec_for(bad), tmp_path / "b")


def test_integer_labels_train_a_classifier(frame: Any, tmp_path: Path) -> None:
    classes = frame.assign(target=(frame["target"] > 0.5).astype("int64"))
    path = model_file(
        tmp_path,
        """
        def build_model(spec):
            inputs = keras.Input(shape=(spec.input_width,))
            model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
            model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
            return model
        """,
    )
    result = trainer(path).train(classes, spec_for(classes), tmp_path / "b")
    assert "accuracy" in result.metrics
    assert BundleMetadata.read(tmp_path / "b").extra["output_width"] == 2


def test_nan_loss_stops_and_says_when(frame: Any, tmp_path: Path) -> None:
    path = model_file(
        tmp_path,
        """
        def build_model(spec):
            inputs = keras.Input(shape=(spec.input_width,))
            model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dense(64)(inputs)))
            model.compile(optimizer=keras.optimizers.SGD(learning_rate=1e6), loss="mse")
            return model
        """,
    )
    with pytest.raises(TrainingError, match=r"loss became NaN or infinite at epoch [1-5]/5") as info:
        trainer(path, epochs=5).train(frame, spec_for(frame), tmp_path / "b")
    assert "learning rate" in str(info.value)
    assert_nothing_written(tmp_path)


def test_one_progress_line_per_epoch(frame: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="prodml.trainer")
    trainer(EXAMPLE, epochs=3).train(frame, spec_for(frame), tmp_path / "b")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split(" - ")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert "val_loss" in lines[-1]


OUT_OF_SPACE = """
import resource, signal, sys
from pathlib import Path
from prodml.core.errors import BundleError
from prodml.core.interfaces import DatasetSchema, TrainSpec
from prodml.plugins.trainers.keras import KerasTrainer, KerasTrainerConfig
from prodml.plugins.trainers import _keras_impl  # TensorFlow imported before the limit
from prodml.testing.trainers import regression_frame

frame = regression_frame(rows=40)
spec = TrainSpec(model_name="m", schema=DatasetSchema(feature_names=("x0", "x1", "x2"), label="target"))
config = KerasTrainerConfig(type="keras", model=sys.argv[1], epochs=1)
# a file-size limit makes the kernel fail writes the way a full disk does (EFBIG, not a mock)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
try:
    KerasTrainer(config).train(frame, spec, Path(sys.argv[2]))
except BundleError as exc:
    print("BundleError:", exc)
"""


def test_failed_write_leaves_no_bundle(tmp_path: Path) -> None:
    out = tmp_path / "models" / "bundle"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", OUT_OF_SPACE, f"{EXAMPLE}:build_model", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert "BundleError: could not write the bundle" in result.stdout, result.stderr[-2000:]
    assert "nothing was left behind" in result.stdout
    assert list((tmp_path / "models").iterdir()) == []


def test_progress_prints_one_line_per_epoch_on_a_terminal() -> None:
    import io

    from prodml.plugins.trainers._keras_impl import EpochProgress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = EpochProgress(epochs=12, stream=stream)
    progress.on_epoch_end(0, {"loss": 1.23456, "val_loss": 2.0})
    progress.on_epoch_end(11, {"loss": 0.5})
    assert stream.getvalue().splitlines() == [
        "epoch  1/12 - loss: 1.235 - val_loss: 2",
        "epoch 12/12 - loss: 0.5",
    ]
