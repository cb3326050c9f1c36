"""The TensorFlow side of multi-worker training: the strategy, the synchronous loop, the copy.

Why a training loop of our own: Keras 3's ``Model.fit`` does not run under
``MultiWorkerMirroredStrategy`` (keras-team/keras#20585, tensorflow#72388 — it fails building
the model's metrics from a distributed batch, and again reducing them). The loop below uses
only what ``fit`` would: the model's compiled loss and optimizer, inside the strategy, with
each global batch (``trainer.batch_size`` rows) split across the workers, gradients summed by
the strategy's all-reduce every step. Metrics are Keras' own, computed by ``evaluate`` on a
plain (undistributed) copy at the end of each epoch.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from prodml.core.errors import TrainingError
from prodml.plugins.trainers._tf import keras, tf

if TYPE_CHECKING:
    from prodml.plugins.trainers.keras import KerasTrainerConfig

log = logging.getLogger("prodml.trainer")

#: Rows per forward pass when evaluating metrics (inference only, so larger than training batches).
EVAL_BATCH = 4096


class WorkerContext:
    """This process's place among the workers, and the strategy that joins them.

    Create it before any other TensorFlow work: the strategy configures the process's
    collective runtime from ``TF_CONFIG``.
    """

    def __init__(self, communication_timeout: float) -> None:
        spec = json.loads(os.environ["TF_CONFIG"])
        self.index = int(spec["task"]["index"])
        self.workers = len(spec["cluster"]["worker"])
        #: the TFJob this worker belongs to (on a cluster), recorded in the bundle's lineage
        self.job = os.environ.get("PRODML_TRAIN_JOB")
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=communication_timeout)
        self.strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)

    @property
    def is_chief(self) -> bool:
        """Worker 0 evaluates, and writes the bundle."""
        return self.index == 0

    @contextmanager
    def scope(self) -> Iterator[None]:
        """Variables created here are mirrored on every worker."""
        with self.strategy.scope():
            yield

    def check_in_scope(self, model: keras.Model, label: str) -> None:
        """Refuse a model whose weights were created outside the strategy (they would not sync)."""
        outside = [
            v.path
            for v in model.trainable_variables
            if not self.strategy.extended.variable_created_in_scope(getattr(v, "value", v))
        ]
        if outside:
            shown = ", ".join(outside[:3]) + (f" and {len(outside) - 3} more" if len(outside) > 3 else "")
            raise TrainingError(
                f"the model from {label} was built outside the distribution strategy: its weights "
                f"({shown}) would not be kept in sync between the {self.workers} workers",
                hint="build the model inside the function prodml calls (prodml calls it inside "
                "strategy.scope()); do not build it at import time or reuse a model built earlier",
            )

    def fit(
        self,
        model: keras.Model,
        x: np.ndarray,
        y: np.ndarray,
        validation: tuple[np.ndarray, np.ndarray] | None,
        config: KerasTrainerConfig,
        progress: Any = None,
    ) -> tuple[dict[str, float], int, dict[str, list[float]]]:
        """Train ``model`` in sync with the other workers; return (last metrics, epochs, history).

        ``history`` has Keras' ``History.history`` shape (``loss``, compiled metrics, their
        ``val_`` twins), filled on the chief only: the other workers return it empty.
        """
        per_example = _per_example_loss(model)
        with self.strategy.scope():
            model.optimizer.build(model.trainable_variables)
        dataset = (
            tf.data.Dataset.from_tensor_slices((x, y))
            .shuffle(len(x), seed=config.seed, reshuffle_each_iteration=True)
            .batch(config.batch_size)
        )
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        options.deterministic = True
        batches = self.strategy.experimental_distribute_dataset(dataset.with_options(options))
        strategy = self.strategy

        def replica_step(xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                pred = model(xb, training=True)
                loss = tf.nn.compute_average_loss(tf.cast(per_example(yb, pred), tf.float32))
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        @tf.function
        def run_epoch(iterator: Any) -> tf.Tensor:
            # the whole epoch in one graph call: no Python between steps
            total = tf.constant(0.0)
            steps = tf.constant(0.0)
            for batch in iterator:
                losses = strategy.run(replica_step, args=batch)
                total += strategy.reduce(tf.distribute.ReduceOp.SUM, losses, None)
                steps += 1.0
            return total / tf.maximum(steps, 1.0)

        plain = self.plain_copy(model) if self.is_chief else None
        history: dict[str, list[float]] = {}
        for epoch in range(1, config.epochs + 1):
            loss = float(run_epoch(batches))
            if not math.isfinite(loss):
                raise TrainingError(
                    f"loss became NaN or infinite at epoch {epoch}/{config.epochs}; training stopped "
                    "and no bundle was written",
                    hint="lower the learning rate, scale the features (keras.layers.Normalization with "
                    "spec.feature_mean/spec.feature_variance), or look for extreme label values",
                )
            if plain is None:
                continue
            plain.set_weights(model.get_weights())
            logs = {"loss": loss}
            logs.update({k: v for k, v in _evaluate(plain, x, y, "").items() if k != "loss"})
            if validation is not None:
                logs.update(_evaluate(plain, *validation, "val_"))
            for key, value in logs.items():
                history.setdefault(key, []).append(value)
            if progress is not None:
                progress.on_epoch_end(epoch - 1, logs)
        metrics = {k: v[-1] for k, v in history.items()}
        return metrics, config.epochs, history

    def plain_copy(self, model: keras.Model) -> keras.Model:
        """The same model, weights copied, outside the strategy: what the bundle holds."""
        try:
            copy = keras.models.clone_model(model)
        except Exception as exc:
            raise TrainingError(
                f"distributed training needs a model Keras can clone (Functional or Sequential): "
                f"{type(exc).__name__}: {exc}",
                hint="build the model with keras.Input(...) and layers, or keras.Sequential",
            ) from exc
        copy.set_weights(model.get_weights())
        config = model.get_compile_config() if getattr(model, "compiled", False) else None
        if config:
            copy.compile_from_config(config)
        return copy


def _per_example_loss(model: keras.Model) -> Any:
    """The compiled loss as a function of (y_true, y_pred) returning one value per row."""
    loss = getattr(model, "loss", None)
    if isinstance(loss, keras.losses.Loss):
        return loss.call
    if isinstance(loss, str) or callable(loss):
        return keras.losses.get(loss)
    raise TrainingError(
        f"distributed training needs one compiled loss (a name or a keras.losses.Loss); the model has "
        f"{type(loss).__name__}",
        hint="compile the model with a single loss, e.g. model.compile(loss='mse', ...)",
    )


def _evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray, prefix: str) -> dict[str, float]:
    values = model.evaluate(x, y, batch_size=EVAL_BATCH, verbose=0, return_dict=True)
    return {f"{prefix}{k}": float(v) for k, v in values.items()}
