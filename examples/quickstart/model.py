"""The quickstart's model code: the only ML code a data scientist writes for prodml.

prodml imports this file, calls ``build_model(spec)`` and fits the model it returns on the
training frame (``trainer.epochs``, ``batch_size``, ``validation_split``, ``seed`` from the
config). It writes the bundle, stores it and serves it; this file never reads data or files.

``spec`` (prodml.plugins.trainers.keras.ModelSpec) carries:

- ``feature_names`` / ``input_width``: the input columns, in order, and how many;
- ``label``: the label column;
- ``params``: ``trainer.params`` from the config (here ``units`` and ``learning_rate``);
- ``feature_mean`` / ``feature_variance``: per-feature statistics of the training rows.
"""

import keras


def build_model(spec):
    """A small regression network; scaling is a layer, so the served model takes raw features."""
    units = int(spec.params.get("units", 32))
    inputs = keras.Input(shape=(spec.input_width,), name="features")
    # Normalization with fixed statistics: no custom code, and serving needs no preprocessing.
    x = keras.layers.Normalization(mean=spec.feature_mean, variance=spec.feature_variance)(inputs)
    x = keras.layers.Dense(units, activation="relu")(x)
    x = keras.layers.Dense(units // 2, activation="relu")(x)
    outputs = keras.layers.Dense(1, name="prediction")(x)
    model = keras.Model(inputs, outputs, name="quickstart")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=float(spec.params.get("learning_rate", 0.01))),
        loss="mse",
        metrics=["mae"],
    )
    return model
