"""TensorFlow/Keras side of the ``keras`` trainer; imported only when training or loading.

Kept apart from :mod:`prodml.plugins.trainers.keras` because it imports TensorFlow at
module level (the Keras callbacks below subclass a Keras class).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import logging
import math
import os
import platform
import re
import secrets
import shutil
import sys
import traceback
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

import prodml
from prodml.core.bundle import (
    KERAS_FILE,
    SAVED_MODEL_DIR,
    BundleMetadata,
    Evaluation,
    FeatureInfo,
    frame_fingerprint,
    verify_bundle,
    write_manifest,
)
from prodml.core.errors import BundleError, DataError, TrainingError
from prodml.core.interfaces import TrainResult, TrainSpec
from prodml.plugins.trainers._tf import keras, tf
from prodml.plugins.trainers.keras import DEFAULT_FUNCTIONS, KerasTrainerConfig, ModelSpec, split_rows

if TYPE_CHECKING:
    import pandas as pd

    from prodml.plugins.trainers._distributed_impl import WorkerContext

log = logging.getLogger("prodml.trainer")

#: SavedModel version folder (TF Serving reads ``<model>/<version>/saved_model.pb``).
SAVED_MODEL_VERSION = "1"
SIGNATURE = "serving_default"
INPUT_NAME = "features"
OUTPUT_NAME = "prediction"
#: Where a trusted model's own Python file is kept inside the bundle.
CODE_DIR = "code"
#: Top-level packages whose classes Keras deserializes without running outside code.
SAFE_PACKAGES = frozenset({"keras", "keras_hub", "keras_nlp", "keras_cv", "builtins"})
#: Rows used to check that the written model files predict what the trained model does.
CHECK_ROWS = 16


# -- training ------------------------------------------------------------------------------


def train(
    config: KerasTrainerConfig,
    frame: pd.DataFrame,
    spec: TrainSpec,
    out_dir: Path,
    *,
    worker: WorkerContext | None = None,
) -> TrainResult:
    """Run the user's model code on ``frame`` and write a verified bundle to ``out_dir``.

    With ``worker`` (one of several TensorFlow workers, see
    :mod:`prodml.plugins.trainers.distributed`) the model is built inside the strategy's
    scope and trained in sync with the others; only the chief writes the bundle.
    """
    out_dir = Path(os.path.abspath(out_dir))
    if out_dir.exists():
        raise BundleError(
            f"bundle folder {out_dir} already exists; bundles are never overwritten",
            hint="train into a new folder (or delete the old one)",
        )
    features = list(spec.feature_names)
    x, y = training_arrays(frame, features, spec.label)
    split = split_rows(len(x), config)
    n_val = split.validation
    if config.validation_split and n_val == 0:
        log.warning(
            "validation_split %s of %d rows leaves no validation row; training without validation",
            config.validation_split,
            len(x),
        )
    if split.holdout and split.evaluation == 0:
        log.warning(
            "trainer.evaluation %s of %d rows leaves no evaluation row; no evaluation is recorded",
            config.evaluation,
            len(x),
        )
    x_train, y_train = x[: split.fit], y[: split.fit]
    validation = (x[split.fit : split.fit + n_val], y[split.fit : split.fit + n_val]) if n_val else None
    x_eval, y_eval = x[split.evaluation_start :], y[split.evaluation_start :]

    # seeded before the user's module runs, in case its top level draws random numbers
    seed_everything(config.seed)
    user = load_user_function(config)
    model_spec = ModelSpec(
        feature_names=tuple(features),
        input_width=len(features),
        label=spec.label,
        params=MappingProxyType(dict(config.params)),
        epochs=config.epochs,
        batch_size=config.batch_size,
        validation_split=config.validation_split,
        seed=config.seed,
        feature_mean=tuple(float(v) for v in x_train.astype(np.float64).mean(axis=0)),
        feature_variance=tuple(float(v) for v in x_train.astype(np.float64).var(axis=0)),
    )

    in_scope = worker.scope() if worker is not None else nullcontext()
    if user.contract == "build":
        with in_scope:
            model = call_user(user, model_spec)
        if worker is not None:
            worker.check_in_scope(model, user.label)
        output_width = check_model(model, len(features), user)
        if not getattr(model, "compiled", False):
            raise TrainingError(
                f"{user.label} returned a model that is not compiled",
                hint="call model.compile(optimizer=..., loss=..., metrics=[...]) before returning it",
            )
        custom = check_custom_code(model, config, user)
        if worker is not None:
            metrics, epochs, history = worker.fit(
                model, x_train, y_train, validation, config, EpochProgress(config.epochs)
            )
            model = worker.plain_copy(model)
        else:
            metrics, epochs, history = fit(model, x_train, y_train, validation, config)
    else:
        columns = [*features, spec.label]
        # a held-out evaluation tail is not the user's to train on
        rows = frame[columns].iloc[: split.evaluation_start if split.holdout else None]
        with in_scope:
            model = call_user(user, rows.copy(), model_spec)
        if worker is not None:
            worker.check_in_scope(model, user.label)
            model = worker.plain_copy(model)
        output_width = check_model(model, len(features), user)
        custom = check_custom_code(model, config, user)
        metrics, epochs, history = fitted_metrics(model, x_train, y_train, validation, user)
    if worker is not None and not worker.is_chief:
        return TrainResult(bundle_dir=out_dir, metrics=metrics, epochs=epochs)
    evaluation = None
    if len(x_eval) and getattr(model, "compiled", False):
        evaluation = Evaluation(
            metrics=_evaluate(model, x_eval, y_eval, ""),
            rows=len(x_eval),
            fingerprint=frame_fingerprint(frame[[*features, spec.label]].iloc[split.evaluation_start :]),
            split="holdout" if split.holdout else "validation",
        )

    metadata = BundleMetadata(
        name=spec.model_name,
        features=[FeatureInfo(name=f, dtype=_dtype(spec, frame, f)) for f in features],
        label=spec.label,
        label_dtype=str(frame[spec.label].dtype),
        outputs=[OUTPUT_NAME],
        metrics=metrics,
        history=history,
        evaluation=evaluation,
        # the whole frame, as DataSource.schema fingerprints it, so the two can be compared
        training_data={"rows": len(frame), "sha256": frame_fingerprint(frame)},
        feature_refs=list(spec.schema_.feature_refs),
        entity_keys=list(spec.schema_.entity_keys),
        serving_signature=SIGNATURE,
        config_digest=spec.config_digest,
        versions=versions(),
        extra={
            "model_code": f"{user.path.name}:{user.name}",
            "contract": "build_model(spec)" if user.contract == "build" else "train(frame, spec)",
            "output_width": output_width,
            "epochs": epochs,
            "batch_size": config.batch_size,
            "validation_split": config.validation_split,
            "validation_rows": n_val,
            "evaluation": config.evaluation,
            "seed": config.seed,
            "params": json.loads(json.dumps(dict(config.params), default=str)),
            "custom_code": custom,
            **({"code_module": user.module.__name__} if custom else {}),
            **(
                {
                    "distributed": {
                        "workers": worker.workers,
                        "strategy": "multi_worker_mirrored",
                        **({"job": worker.job} if worker.job else {}),
                    }
                }
                if worker is not None
                else {}
            ),
        },
    )
    write_bundle(model, metadata, user, out_dir, x[:CHECK_ROWS], trust=bool(custom))
    log.info("wrote bundle %s (%s)", out_dir, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return TrainResult(bundle_dir=out_dir, metrics=metrics, epochs=epochs)


def _dtype(spec: TrainSpec, frame: pd.DataFrame, column: str) -> str:
    return spec.schema_.dtypes.get(column) or str(frame[column].dtype)


def training_arrays(frame: pd.DataFrame, features: list[str], label: str) -> tuple[np.ndarray, np.ndarray]:
    """Features as float32 (rows, width) and the label as float32/int32, checked for problems."""
    import pandas as pd

    missing = [c for c in [*features, label] if c not in frame.columns]
    if missing:
        raise DataError(
            f"training frame has no column {', '.join(map(repr, missing))} "
            f"(it has: {', '.join(map(str, frame.columns[:20]))})",
            hint="the source's features/label must name columns of the data",
        )
    if not features:
        raise DataError("no feature columns: the model needs at least one input feature")
    if len(frame) == 0:
        raise DataError("training frame is empty: no rows to train on")
    for role, columns in (("feature", features), ("label", [label])):
        bad = {
            c: str(frame[c].dtype)
            for c in columns
            if not (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))
            or pd.api.types.is_complex_dtype(frame[c])
        }
        if bad:
            shown = ", ".join(f"{c!r} ({d})" for c, d in bad.items())
            raise DataError(
                f"{role} column{'s' if len(bad) > 1 else ''} {shown} not numeric",
                hint=(
                    "encode classes as integers 0..k-1 in the source data"
                    if role == "label"
                    else "encode categories as numbers (ids or one-hot) in the source, or drop the column"
                ),
            )
    # na_value: pandas' nullable dtypes (Int64, Float64, boolean) hold pd.NA, not NaN
    x = frame[features].to_numpy(dtype=np.float64, na_value=np.nan)
    y_raw = frame[label]
    y = y_raw.to_numpy(dtype=np.float64, na_value=np.nan)
    for role, values, names in (("feature", x, features), ("label", y[:, None], [label])):
        finite = np.isfinite(values)
        if not finite.all():
            bad_cols = [names[i] for i in np.flatnonzero(~finite.all(axis=0))]
            rows = int((~finite.all(axis=1)).sum())
            raise DataError(
                f"{role} column{'s' if len(bad_cols) > 1 else ''} {', '.join(map(repr, bad_cols))} "
                f"hold{'' if len(bad_cols) > 1 else 's'} NaN or infinite values in {rows} row(s)",
                hint="fill or drop missing values in the source data before training",
            )
    if np.abs(x).max() > np.finfo(np.float32).max:
        raise DataError("feature values exceed the float32 range the model takes as input")
    # integer labels stay integers (class ids for sparse categorical losses)
    is_int = pd.api.types.is_integer_dtype(y_raw) and not pd.api.types.is_bool_dtype(y_raw)
    return x.astype(np.float32), (y.astype(np.int32) if is_int else y.astype(np.float32))


def seed_everything(seed: int) -> None:
    """Same seed -> same initial weights, shuffles and dropout masks (op determinism on)."""
    keras.backend.clear_session()  # fresh layer names and Keras' global seed generator
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


class _UserFunction:
    """The user's model function and where it came from."""

    def __init__(self, fn: Callable[..., Any], name: str, path: Path, module: ModuleType, contract: str):
        self.fn, self.name, self.path, self.module, self.contract = fn, name, path, module, contract

    @property
    def label(self) -> str:
        return f"{self.name}() in {self.path}"


def load_user_function(config: KerasTrainerConfig) -> _UserFunction:
    """Import the model file and find the function; TrainingError names the path tried."""
    path = config.model_path
    if not path.is_file():
        raise TrainingError(
            f"model code file not found: {path}",
            hint=f"trainer.model is {config.model!r}; a relative path is relative to the config file",
        )
    module = import_model_file(path, module_name_for(path))
    wanted = (config.model_function,) if config.model_function else DEFAULT_FUNCTIONS
    fn = next((getattr(module, n) for n in wanted if callable(getattr(module, n, None))), None)
    if fn is None:
        defined = sorted(
            n
            for n, v in vars(module).items()
            if inspect.isfunction(v) and v.__module__ == module.__name__ and not n.startswith("_")
        )
        raise TrainingError(
            f"{path} has no function {' or '.join(map(repr, wanted))}"
            f" (functions defined there: {', '.join(defined) or 'none'})",
            hint="write `model: file.py:function` with a function the file defines",
        )
    name = getattr(fn, "__name__", wanted[0])
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        params = []
    required = [
        p for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(required) not in (1, 2):
        raise TrainingError(
            f"{name}() in {path} takes {len(required)} required arguments; it must be "
            "build_model(spec) returning a compiled keras.Model, or train(frame, spec) "
            "returning a fitted one"
        )
    return _UserFunction(fn, name, path, module, "build" if len(required) == 1 else "train")


def module_name_for(path: Path) -> str:
    """A module name unique to the file's content (Keras records it for custom classes)."""
    stem = re.sub(r"\W", "_", path.stem) or "model"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    return f"prodml_model_{stem}_{digest}"


def import_model_file(path: Path, module_name: str) -> ModuleType:
    """Import ``path`` as ``module_name`` (reused when already imported: the name hashes content)."""
    module = sys.modules.get(module_name)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TrainingError(f"cannot import model code {path}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # Keras and dataclasses look classes up by module
    try:
        # sibling helper modules of the model file import as they would when run directly
        with _sys_path(path.parent):
            spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise TrainingError(f"importing model code {path} failed: {describe(exc, path)}") from exc
    return module


@contextmanager
def _sys_path(folder: Path) -> Iterator[None]:
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        with suppress(ValueError):
            sys.path.remove(str(folder))


def describe(exc: BaseException, path: Path) -> str:
    """``Type: message (file line N)`` with the deepest frame inside the user's file."""
    where = ""
    if isinstance(exc, SyntaxError) and exc.lineno:
        where = f" (line {exc.lineno})"
    else:
        lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
        if lines:
            where = f" ({path.name} line {lines[-1]})"
    return f"{type(exc).__name__}: {exc}{where}"


def call_user(user: _UserFunction, *args: Any) -> Any:
    """Call the user's function; its exceptions become a TrainingError naming the line."""
    try:
        return user.fn(*args)
    except TrainingError:
        raise
    except Exception as exc:
        raise TrainingError(f"{user.label} raised {describe(exc, user.path)}") from exc


def check_model(model: Any, width: int, user: _UserFunction) -> int:
    """Check the user's model takes (None, width) float32 and returns (None, k); return k."""
    if not isinstance(model, keras.Model):
        hint = "return the model itself, not (model, history)" if isinstance(model, tuple) else None
        raise TrainingError(
            f"{user.label} returned {type(model).__name__}, not a keras.Model",
            hint=hint or "end the function with `return model` (a keras.Model)",
        )
    inputs = _declared_inputs(model)
    if inputs is not None:
        if len(inputs) != 1:
            raise TrainingError(
                f"the model from {user.label} has {len(inputs)} inputs; prodml feeds one input "
                f"of shape (None, {width}) with the features in spec.feature_names order",
                hint="build it on keras.Input(shape=(spec.input_width,))",
            )
        shape = tuple(inputs[0].shape)
        if len(shape) != 2 or (shape[-1] is not None and shape[-1] != width):
            raise TrainingError(
                f"the model from {user.label} takes inputs of shape {shape}, but the data has "
                f"{width} feature{'s' if width != 1 else ''}: it needs shape (None, {width})",
                hint="build the input as keras.Input(shape=(spec.input_width,))",
            )
    try:
        out = model(np.zeros((2, width), dtype=np.float32), training=False)
    except Exception as exc:
        raise TrainingError(
            f"the model from {user.label} cannot take a batch of {width} features: "
            f"{describe(exc, user.path)}",
            hint="build the input as keras.Input(shape=(spec.input_width,))",
        ) from exc
    if isinstance(out, list | tuple | dict) or len(getattr(out, "shape", ())) != 2:
        got = type(out).__name__ if isinstance(out, list | tuple | dict) else f"shape {tuple(out.shape)}"
        raise TrainingError(
            f"the model from {user.label} returns {got}; prodml serves one output of shape (None, k) per row",
            hint="end the model with a Dense(k) layer",
        )
    return int(out.shape[-1])


def _declared_inputs(model: keras.Model) -> list | None:
    """The model's symbolic inputs (functional/Sequential with Input), or None if unknown."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    return list(inputs) if inputs else None


def check_custom_code(model: keras.Model, config: KerasTrainerConfig, user: _UserFunction) -> list[str]:
    """What in the model needs arbitrary code to load; refuse it unless trusted."""
    try:
        serialized = keras.saving.serialize_keras_object(model)
    except Exception as exc:
        raise TrainingError(
            f"the model from {user.label} cannot be saved: {describe(exc, user.path)}",
            hint="custom layers need get_config(); prefer built-in Keras layers",
        ) from exc
    found = find_custom_code(serialized)
    if found and not config.trust_model_code:
        raise TrainingError(
            f"the model from {user.label} needs arbitrary Python code to load: {'; '.join(found)}. "
            "Bundles are loaded in Keras safe mode, so serving would refuse it",
            hint=(
                "use built-in Keras layers (Rescaling, Normalization, ... instead of Lambda), or set "
                "trainer.trust_model_code: true if you trust this code (serving must trust it too)"
            ),
        )
    return found


def find_custom_code(config: Any) -> list[str]:
    """Parts of a serialized Keras config that only load by running outside Python code."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            cls, module = node.get("class_name"), node.get("module")
            if cls == "Lambda":
                name = (node.get("config") or {}).get("name", "?")
                found.append(f"Lambda layer {name!r}")
                return  # its function is part of the layer, not a second finding
            elif cls == "__lambda__":
                found.append("a Python lambda function")
            elif (
                isinstance(cls, str)
                and isinstance(module, str)
                and module.split(".", 1)[0] not in SAFE_PACKAGES
            ):
                what = (node.get("config") if cls == "function" else None) or cls
                found.append(f"{what} from {_user_module_label(module)}")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return list(dict.fromkeys(found))


def _user_module_label(module: str) -> str:
    match = re.fullmatch(r"prodml_model_(.+)_[0-9a-f]{10}", module)
    return f"the model file ({match.group(1)}.py)" if match else f"module {module}"


# -- fitting ------------------------------------------------------------------------------


class NanGuard(keras.callbacks.Callback):
    """Stops training at the first NaN/inf loss and remembers where."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0
        self.where: tuple[int, int | None, str] | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._check((logs or {}).get("loss"), batch, "loss")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for key in ("loss", "val_loss"):
            self._check((logs or {}).get(key), None, key)

    def _check(self, value: Any, batch: int | None, key: str) -> None:
        if value is None or self.where is not None:
            return
        if not math.isfinite(float(np.asarray(value))):
            self.where = (self.epoch + 1, batch, key)
            self.model.stop_training = True


class EpochProgress(keras.callbacks.Callback):
    """One line per epoch with the loss and metrics: on a terminal, else at log level INFO."""

    def __init__(self, epochs: int, stream: Any = None) -> None:
        super().__init__()
        self.epochs = epochs
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = " - ".join(f"{k}: {float(np.asarray(v)):.4g}" for k, v in (logs or {}).items())
        width = len(str(self.epochs))
        line = f"epoch {epoch + 1:>{width}}/{self.epochs} - {values}"
        if self.tty:
            print(line, file=self.stream, flush=True)
        else:
            log.info("%s", line)


def fit(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray] | None,
    config: KerasTrainerConfig,
) -> tuple[dict[str, float], int, dict[str, list[float]]]:
    """Fit with prodml's settings; stop with a TrainingError on a NaN loss.

    Returns:
        The last epoch's metrics, the number of epochs run and the per-epoch history.
    """
    guard = NanGuard()
    try:
        history = model.fit(
            x,
            y,
            validation_data=validation,
            epochs=config.epochs,
            batch_size=config.batch_size,
            shuffle=True,
            verbose=0,
            callbacks=[guard, EpochProgress(config.epochs)],
        )
    except Exception as exc:
        raise TrainingError(
            f"training failed: {type(exc).__name__}: {_first_line(exc)}",
            hint="check that the model's loss fits the label (e.g. sparse_categorical_crossentropy for "
            "integer classes) and the output width",
        ) from exc
    if guard.where is not None:
        epoch, batch, key = guard.where
        at = f"epoch {epoch}/{config.epochs}" + (f", batch {batch + 1}" if batch is not None else "")
        raise TrainingError(
            f"{'validation loss' if key == 'val_loss' else 'loss'} became NaN or infinite at {at}; "
            "training stopped and no bundle was written",
            hint="lower the learning rate, scale the features (keras.layers.Normalization with "
            "spec.feature_mean/spec.feature_variance), or look for extreme label values",
        )
    metrics = {k: float(v[-1]) for k, v in history.history.items() if v}
    return metrics, len(history.epoch), _per_epoch(history)


def _per_epoch(history: keras.callbacks.History) -> dict[str, list[float]]:
    """``History.history`` as plain floats (loss and every compiled metric, train and val_)."""
    return {k: [float(np.asarray(x)) for x in v] for k, v in history.history.items() if v}


def fitted_metrics(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray] | None,
    user: _UserFunction,
) -> tuple[dict[str, float], int, dict[str, list[float]]]:
    """Metrics (last epoch), epochs and per-epoch history of a model the user fitted itself."""
    history = getattr(model, "history", None)
    per_epoch: dict[str, list[float]] = {}
    if isinstance(history, keras.callbacks.History) and history.history:
        metrics = {k: float(v[-1]) for k, v in history.history.items() if v}
        epochs = len(history.epoch)
        per_epoch = _per_epoch(history)
    elif getattr(model, "compiled", False):
        metrics = _evaluate(model, x, y, "")
        if validation is not None:
            metrics.update(_evaluate(model, *validation, "val_"))
        epochs = 0
    else:
        metrics, epochs = {}, 0
    preds = np.asarray(model(x[:CHECK_ROWS], training=False))
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad or not np.isfinite(preds).all():
        raise TrainingError(
            f"the model from {user.label} has NaN or infinite "
            f"{', '.join(bad) if bad else 'predictions'}; no bundle was written",
            hint="lower the learning rate or scale the features",
        )
    return metrics, epochs, per_epoch


def _evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray, prefix: str) -> dict[str, float]:
    values = model.evaluate(x, y, verbose=0, return_dict=True)
    return {f"{prefix}{k}": float(v) for k, v in values.items()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


# -- writing the bundle --------------------------------------------------------------------


def versions() -> dict[str, str]:
    """Versions that matter for reloading the bundle."""
    return {
        "prodml": prodml.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def export_saved_model(model: keras.Model, path: Path, width: int) -> None:
    """TF SavedModel with signature ``serving_default``: ``features`` (None, width) -> ``prediction``."""
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(features: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_NAME: model(features, training=False)}

    archive.add_endpoint(
        name=SIGNATURE,
        fn=serve,
        input_signature=[tf.TensorSpec((None, width), tf.float32, name=INPUT_NAME)],
    )
    archive.write_out(str(path), verbose=False)


def write_bundle(
    model: keras.Model,
    metadata: BundleMetadata,
    user: _UserFunction,
    out_dir: Path,
    sample: np.ndarray,
    *,
    trust: bool,
) -> None:
    """Write the bundle into a hidden sibling folder; rename it to ``out_dir`` when complete."""
    parent = out_dir.parent
    tmp = parent / f".{out_dir.name}.partial-{secrets.token_hex(4)}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        model.save(tmp / KERAS_FILE)
        export_saved_model(model, tmp / SAVED_MODEL_DIR / SAVED_MODEL_VERSION, len(metadata.features))
        if trust:
            (tmp / CODE_DIR).mkdir()
            shutil.copyfile(user.path, tmp / CODE_DIR / f"{metadata.extra['code_module']}.py")
        metadata.write(tmp)
        check_written(model, tmp, metadata, sample, trust=trust)
        write_manifest(tmp)
        verify_bundle(tmp)
        _fsync_dir(tmp)
        os.rename(tmp, out_dir)
        _fsync_dir(parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        os_error = _os_error(exc)
        if os_error is not None:
            out_of_space = os_error.errno in (28, 27, 122)  # ENOSPC, EFBIG, EDQUOT
            raise BundleError(
                f"could not write the bundle to {out_dir}: {os_error.strerror or os_error}; "
                "nothing was left behind",
                hint="free disk space (or raise the quota) and train again"
                if out_of_space
                else "check that the folder is writable",
            ) from exc
        if isinstance(exc, tf.errors.OpError):
            raise BundleError(
                f"could not write the SavedModel to {out_dir}: {_first_line(exc)}; nothing was left behind",
                hint="check free disk space and permissions, then train again",
            ) from exc
        raise


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` (Keras and h5py wrap some of them)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_written(
    model: keras.Model, bundle: Path, metadata: BundleMetadata, sample: np.ndarray, *, trust: bool
) -> None:
    """Both written model files must load and predict what the trained model predicts."""
    expected = np.asarray(model(sample, training=False))
    reloaded = load_keras_file(bundle, metadata, trust_model_code=trust)
    from_keras = np.asarray(reloaded(sample, training=False))
    serving = tf.saved_model.load(str(bundle / SAVED_MODEL_DIR / SAVED_MODEL_VERSION))
    from_saved = serving.signatures[SIGNATURE](**{INPUT_NAME: tf.constant(sample)})[OUTPUT_NAME].numpy()
    for what, got in ((KERAS_FILE, from_keras), (f"{SAVED_MODEL_DIR}/{SAVED_MODEL_VERSION}", from_saved)):
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
            raise TrainingError(
                f"the saved {what} does not predict what the trained model predicts",
                hint="a custom layer probably behaves differently after saving; check its get_config()",
            )


# -- loading -------------------------------------------------------------------------------


def load_bundle(bundle_dir: Path, *, trust_model_code: bool = False) -> tuple[keras.Model, BundleMetadata]:
    """See :func:`prodml.plugins.trainers.keras.load_bundle`."""
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle folder {bundle_dir} does not exist")
    verify_bundle(bundle_dir)
    metadata = BundleMetadata.read(bundle_dir)
    model = load_keras_file(bundle_dir, metadata, trust_model_code=trust_model_code)
    inputs = _declared_inputs(model)
    width = len(metadata.features)
    if inputs is not None and (len(inputs) != 1 or tuple(inputs[0].shape)[-1] not in (None, width)):
        raise BundleError(
            f"the model in {bundle_dir} does not take the {width} features its prodml.json lists"
        )
    return model, metadata


def load_keras_file(bundle_dir: Path, metadata: BundleMetadata, *, trust_model_code: bool) -> keras.Model:
    """Load ``model.keras`` in safe mode; code-bearing models only when trusted."""
    path = bundle_dir / KERAS_FILE
    try:
        with zipfile.ZipFile(path) as archive:
            model_config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as exc:
        raise BundleError(f"{path} is not a Keras model file: {exc}") from exc
    custom = find_custom_code(model_config)
    custom_objects: dict[str, Any] = {}
    if custom:
        if not trust_model_code:
            raise BundleError(
                f"refusing to load {path}: the model needs arbitrary Python code ({'; '.join(custom)})",
                hint="load it with trust_model_code=True (trust_model_code: true in the config) "
                "only if you trust where this bundle came from",
            )
        custom_objects = _bundle_code_objects(bundle_dir, metadata)
    try:
        return keras.saving.load_model(
            path, compile=False, safe_mode=not trust_model_code, custom_objects=custom_objects or None
        )
    except Exception as exc:
        raise BundleError(f"cannot load {path}: {type(exc).__name__}: {_first_line(exc)}") from exc


def _bundle_code_objects(bundle_dir: Path, metadata: BundleMetadata) -> dict[str, Any]:
    """Import the model file kept in the bundle; its classes and functions, by name."""
    name = metadata.extra.get("code_module")
    if not name:
        return {}
    path = bundle_dir / CODE_DIR / f"{name}.py"
    if not path.is_file():
        raise BundleError(f"{bundle_dir} lacks its model code {CODE_DIR}/{name}.py")
    try:
        module = import_model_file(path, name)
    except TrainingError as exc:
        raise BundleError(exc.message) from exc
    return {k: v for k, v in vars(module).items() if inspect.isclass(v) or inspect.isfunction(v)}


# -- evaluating ----------------------------------------------------------------------------


def compile_config(bundle_dir: Path) -> dict[str, Any] | None:
    """The loss/metrics/optimizer a bundle's model was compiled with (from model.keras)."""
    path = bundle_dir / KERAS_FILE
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json")).get("compile_config")
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as exc:
        raise BundleError(f"{path} is not a Keras model file: {exc}") from exc


def evaluate_bundle(
    bundle_dir: Path, rows: pd.DataFrame, *, metrics_of: Path | None, trust_model_code: bool
) -> dict[str, float]:
    """See :meth:`prodml.plugins.trainers.keras.KerasTrainer.evaluate`."""
    model, metadata = load_bundle(bundle_dir, trust_model_code=trust_model_code)
    definitions = compile_config(metrics_of or bundle_dir)
    if not definitions:
        raise BundleError(
            f"the model in {metrics_of or bundle_dir} was saved without compiled loss and metrics, "
            "so it cannot be evaluated",
            hint="compile the model (model.compile(loss=..., metrics=[...])) in the model code",
        )
    x, y = training_arrays(rows, metadata.feature_names, metadata.label)
    try:
        model.compile_from_config(definitions)
    except Exception as exc:
        raise BundleError(
            f"cannot rebuild the loss and metrics of {metrics_of or bundle_dir}: "
            f"{type(exc).__name__}: {_first_line(exc)}",
            hint="custom losses or metrics load only with trainer.trust_model_code: true",
        ) from exc
    return _evaluate(model, x, y, "")
