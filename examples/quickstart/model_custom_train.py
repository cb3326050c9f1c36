"""The alternative contract: ``train(frame, spec)`` fits the model itself.

Use it when ``build_model(spec)`` is not enough: your own callbacks (early stopping below),
sample weights, a custom split, several fit phases. Point the config at it::

    trainer: {type: keras, model: model_custom_train.py:train, epochs: 20, seed: 42}

prodml has already seeded Python, NumPy and TensorFlow (``trainer.seed``, op determinism on)
before calling ``train``. ``frame`` is a pandas DataFrame with the feature columns in
``spec.feature_names`` order and the label column ``spec.label``; return the fitted
``keras.Model``. prodml checks it, records its metrics (from the last ``fit``) and writes
the bundle; this file still never reads files or talks to a store.
"""

import keras


def train(frame, spec):
    """Fit with early stopping on the last ``spec.validation_split`` of the rows."""
    x = frame[list(spec.feature_names)].to_numpy(dtype="float32")
    y = frame[spec.label].to_numpy(dtype="float32")

    inputs = keras.Input(shape=(spec.input_width,), name="features")
    hidden = keras.layers.Normalization(mean=spec.feature_mean, variance=spec.feature_variance)(inputs)
    hidden = keras.layers.Dense(int(spec.params.get("units", 32)), activation="relu")(hidden)
    outputs = keras.layers.Dense(1, name="prediction")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", metrics=["mae"])

    model.fit(
        x,
        y,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        validation_split=spec.validation_split,
        callbacks=[keras.callbacks.EarlyStopping(patience=3, restore_best_weights=True)],
        verbose=0,
    )
    return model
