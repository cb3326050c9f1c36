"""The ``keras`` trainer backend: the data scientist's Keras code -> a model bundle.

The user writes one Python file and names a function in it (``model: model.py:build_model``).
That function receives a :class:`ModelSpec` and either

* **builds** a model — ``build_model(spec) -> keras.Model``, compiled; prodml seeds, fits it
  (``epochs``, ``batch_size``, ``validation_split`` from the config) and records metrics; or
* **trains** one — ``train(frame, spec) -> keras.Model``, fitted; for custom loops, callbacks
  or sample weights. ``frame`` holds the feature columns (in ``spec.feature_names`` order)
  and the label column.

Which one is meant is read from the function's signature (one required argument: build;
two: train). The user's code never reads files or talks to stores: prodml hands it the data
and writes the bundle (``model.keras``, ``saved_model/1/``, ``prodml.json``,
``MANIFEST.sha256``) into a temporary sibling of ``out_dir``, renamed into place only when
complete.

Serving loads a bundle with :func:`load_bundle`. This module imports no TensorFlow; the work
is done in :mod:`prodml.plugins.trainers._keras_impl`, imported on first use.
"""

from __future__ import annotations

import keyword
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from prodml import hookimpl
from prodml.core.config import PluginConfig, resolve_path
from prodml.core.interfaces import Trainer, TrainResult, TrainSpec
from prodml.core.plugins import Backend
from prodml.plugins.trainers.distributed import DistributedTraining

if TYPE_CHECKING:
    import keras
    import pandas as pd

    from prodml.core.bundle import BundleMetadata
    from prodml.core.config import ProdmlConfig

#: Function looked up when ``model:`` names only a file.
DEFAULT_FUNCTIONS = ("build_model", "train")


class KerasTrainerConfig(PluginConfig):
    """Train the user's TensorFlow/Keras model code (``model: file.py:function``)."""

    type: Literal["keras"]
    model: str = Field(
        description=(
            "the user's model code as `path/to/file.py:function` (path relative to the config "
            "file). The function is `build_model(spec)` returning a compiled keras.Model, or "
            "`train(frame, spec)` returning a fitted one; without `:function`, `build_model` "
            "(else `train`) is used"
        )
    )
    epochs: int = Field(10, ge=1, le=100_000, description="passes over the training rows")
    batch_size: int = Field(32, ge=1, description="rows per gradient step")
    validation_split: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="fraction of rows (the last ones, not shuffled) held out for validation metrics",
    )
    evaluation: Literal["validation"] | float = Field(
        "validation",
        description=(
            "rows every version is evaluated on (recorded in prodml.json, compared by `gate:`): "
            "`validation` (the validation rows), or a fraction such as 0.1 — the last rows of the "
            "frame, held out from fitting and validation"
        ),
    )
    seed: int = Field(
        42,
        ge=0,
        lt=2**31,
        description="seeds Python, NumPy and TensorFlow (with op determinism): same seed, same weights",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="free settings handed to the model function as `spec.params` (units, learning rate…)",
    )
    trust_model_code: bool = Field(
        False,
        description=(
            "allow models that need arbitrary Python code to load (Lambda layers, custom layers "
            "or functions defined in the model file); only for code you trust"
        ),
    )

    distributed: DistributedTraining | None = Field(
        None,
        description="train with several TensorFlow workers in sync (MultiWorkerMirroredStrategy): "
        "processes on this machine, or a Kubeflow TFJob on a cluster",
    )

    @field_validator("model")
    @classmethod
    def _resolve_model(cls, value: str, info: ValidationInfo) -> str:
        path, function = split_model_ref(value)
        if not path.endswith(".py"):
            raise ValueError(f"{value!r} must name a Python file and a function, like `model.py:build_model`")
        if function is not None and (not function.isidentifier() or keyword.iskeyword(function)):
            raise ValueError(f"{function!r} in {value!r} is not a Python function name")
        resolved = resolve_path(Path(path), info)
        return f"{resolved}:{function}" if function else str(resolved)

    @field_validator("evaluation")
    @classmethod
    def _fraction(cls, value: Any) -> Any:
        if isinstance(value, float) and not 0.0 < value < 1.0:
            raise ValueError(f"must be `validation` or a fraction between 0 and 1 (exclusive), not {value}")
        return value

    @property
    def model_path(self) -> Path:
        """The model file (absolute once the config is validated with a base dir)."""
        return Path(split_model_ref(self.model)[0])

    @property
    def model_function(self) -> str | None:
        """The function named after ``:``, or None for the default lookup."""
        return split_model_ref(self.model)[1]


def split_model_ref(value: str) -> tuple[str, str | None]:
    """Split ``path/file.py:function`` into (path, function); the function is optional."""
    value = value.strip()
    path, sep, function = value.rpartition(":")
    # no colon, or one that belongs to a Windows drive ("C:\\m.py") rather than a function
    if not sep or not path or "/" in function or "\\" in function or function.endswith(".py"):
        return value, None
    return path, function


@dataclass(frozen=True)
class RowSplit:
    """How the trainer splits a frame of ``rows`` rows (always in order, never shuffled).

    Rows ``[0, fit)`` are fitted on, ``[fit, fit + validation)`` validate, and the
    evaluation rows are ``[evaluation_start, rows)``: the validation rows by default, or a
    held-out tail (``trainer.evaluation: 0.1``) that neither fitting nor validation sees.
    """

    rows: int
    fit: int
    validation: int
    evaluation_start: int
    holdout: bool

    @property
    def evaluation(self) -> int:
        return self.rows - self.evaluation_start


def split_rows(rows: int, config: KerasTrainerConfig) -> RowSplit:
    """The :class:`RowSplit` of ``rows`` rows under ``config``."""
    if config.evaluation == "validation":
        validation = math.floor(rows * config.validation_split)
        return RowSplit(rows, rows - validation, validation, rows - validation, holdout=False)
    held = math.floor(rows * float(config.evaluation))
    rest = rows - held
    validation = math.floor(rest * config.validation_split)
    return RowSplit(rows, rest - validation, validation, rest, holdout=True)


@dataclass(frozen=True)
class ModelSpec:
    """What the user's model function is told about the task.

    Attributes:
        feature_names: the model's input columns, in the order of the input vector.
        input_width: ``len(feature_names)``; build the input as ``keras.Input((spec.input_width,))``.
        label: name of the label column.
        params: the config's ``trainer.params`` (read-only).
        epochs: ``trainer.epochs`` (for ``train(frame, spec)`` functions that fit themselves).
        batch_size: ``trainer.batch_size``.
        validation_split: ``trainer.validation_split``.
        seed: ``trainer.seed``; prodml has already seeded Python, NumPy and TensorFlow.
        feature_mean: mean of each feature over the training rows (not the validation rows).
        feature_variance: variance of each feature over the training rows; with
            ``feature_mean`` ready for ``keras.layers.Normalization(mean=..., variance=...)``,
            so scaling travels inside the model to serving.
    """

    feature_names: tuple[str, ...]
    input_width: int
    label: str
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    epochs: int = 10
    batch_size: int = 32
    validation_split: float = 0.2
    seed: int = 42
    feature_mean: tuple[float, ...] = ()
    feature_variance: tuple[float, ...] = ()


class KerasTrainer(Trainer):
    """Runs the user's Keras model code and writes a model bundle."""

    config: KerasTrainerConfig

    def preflight(self, *, offline: bool) -> list[str]:
        """The model file exists, parses, and defines the function (read, never run)."""
        import ast

        from prodml.runner.preflight import missing_file

        path = self.config.model_path
        problem = missing_file(path, "the model file", field="trainer.model")
        if problem:
            return [problem]
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except SyntaxError as exc:
            return [f"the model file {path} has a syntax error on line {exc.lineno}: {exc.msg}"]
        # lenient on purpose: a name bound anywhere (an `if`, an import) counts as defined,
        # so the check never refuses a file that would load
        defined: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defined.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif isinstance(node, ast.alias):
                defined.add((node.asname or node.name).split(".")[0])
        wanted = self.config.model_function
        if wanted is not None and wanted not in defined:
            return [f"the model file {path} defines no function {wanted!r} (trainer.model)"]
        if wanted is None and not defined & set(DEFAULT_FUNCTIONS):
            return [
                f"the model file {path} defines neither {' nor '.join(DEFAULT_FUNCTIONS)} (trainer.model)"
            ]
        return []

    def train(self, frame: pd.DataFrame, spec: TrainSpec, out_dir: Path) -> TrainResult:
        """Train on ``frame`` and write a verified bundle to ``out_dir`` (which must not exist)."""
        if self.config.distributed is not None and self.config.distributed.enabled:
            from prodml.plugins.trainers import distributed

            return distributed.train(self.config, frame, spec, Path(out_dir))
        from prodml.plugins.trainers import _keras_impl

        return _keras_impl.train(self.config, frame, spec, Path(out_dir))

    def _cluster_job(self, project: ProdmlConfig) -> bool:
        dist = self.config.distributed
        return dist is not None and dist.enabled and dist.backend != "processes"

    def cluster_manifests(self, project: ProdmlConfig) -> list[dict[str, Any]]:
        """The TFJob of distributed training (``trainer.distributed``), dataset left as a placeholder."""
        if not self._cluster_job(project):
            return []
        from prodml.plugins.trainers import tfjob

        return [tfjob.render_offline(project)]

    def uses_store(self, project: ProdmlConfig) -> bool:
        """A TFJob's chief pushes the bundle to the store; the train step pulls it back."""
        return self._cluster_job(project)

    def evaluation_rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The rows :meth:`train` evaluates on: the validation rows, or the held-out tail."""
        split = split_rows(len(frame), self.config)
        return frame.iloc[split.evaluation_start :]

    def evaluate(
        self, bundle_dir: Path, rows: pd.DataFrame, *, metrics_of: Path | None = None
    ) -> dict[str, float]:
        """Loss and compiled metrics of the bundle's model on ``rows`` (features then label).

        Args:
            bundle_dir: the bundle to score (verified and loaded with :func:`load_bundle`).
            rows: a frame holding the bundle's feature columns and its label.
            metrics_of: another bundle whose loss and metrics to use, so that two models are
                measured alike (default: the bundle's own).
        """
        from prodml.plugins.trainers import _keras_impl

        return _keras_impl.evaluate_bundle(
            Path(bundle_dir),
            rows,
            metrics_of=Path(metrics_of) if metrics_of else None,
            trust_model_code=self.config.trust_model_code,
        )


def load_bundle(bundle_dir: Path, *, trust_model_code: bool = False) -> tuple[keras.Model, BundleMetadata]:
    """Load the Keras model of a bundle, after verifying the bundle against its manifest.

    The model is loaded with Keras' ``safe_mode``. A model that needs arbitrary Python code
    (a Lambda layer, or layers/functions defined in the user's model file) is refused
    unless ``trust_model_code`` is true; then the model code kept in the bundle runs.

    Args:
        bundle_dir: a bundle folder written by the ``keras`` trainer.
        trust_model_code: allow (and run) the model's own Python code.

    Returns:
        The model (not compiled: for inference) and the bundle's metadata.

    Raises:
        BundleError: the bundle is incomplete or tampered with, needs untrusted code, or
            cannot be loaded.
    """
    from prodml.plugins.trainers import _keras_impl

    return _keras_impl.load_bundle(Path(bundle_dir), trust_model_code=trust_model_code)


@hookimpl
def prodml_backends() -> list[Backend]:
    return [
        Backend(
            "trainer",
            "keras",
            KerasTrainerConfig,
            KerasTrainer,
            requires=("tensorflow", "keras"),
            extra="tensorflow",
            description="the user's TensorFlow/Keras model code (build_model or train)",
        )
    ]
