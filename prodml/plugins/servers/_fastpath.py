"""A NumPy forward pass for plain chains of Dense-style Keras layers, used only when it agrees.

A served request is usually one row through a small network. TensorFlow's compiled function
costs ~0.2 ms of dispatch per call and hands the work to its thread pool, which on a busy
machine waits for a core; the same few matrix products in NumPy run in microseconds on the
calling thread. :func:`numpy_forward` builds such a pass for models made only of layers it
knows (InputLayer, Normalization, Dense, Activation, BatchNormalization, Dropout), and
returns None for anything else. The model server then keeps it only if it matches the
compiled TensorFlow function on probe inputs *and* measures faster (see ``_model.py``);
otherwise TensorFlow serves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Forward = Callable[[np.ndarray], np.ndarray]


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray] | None] = {
    "linear": None,
    "relu": _relu,
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "softmax": _softmax,
}


def _activation(fn: Any) -> tuple[bool, Callable[[np.ndarray], np.ndarray] | None]:
    name = getattr(fn, "__name__", None)
    if name in ACTIVATIONS:
        return True, ACTIVATIONS[name]
    return False, None


def _array(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def numpy_forward(model: Any) -> Forward | None:
    """A NumPy function computing ``model(x)`` for a chain of known layers, else None."""
    if (
        len(getattr(model, "inputs", None) or [None]) != 1
        or len(getattr(model, "outputs", None) or [None]) != 1
    ):
        return None
    steps: list[Callable[[np.ndarray], np.ndarray]] = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in ("InputLayer", "Dropout"):
            continue
        if kind == "Normalization":
            if getattr(layer, "invert", False):
                return None
            mean = _array(layer.mean)
            scale = np.maximum(np.sqrt(_array(layer.variance)), np.float32(1e-7))
            steps.append(lambda x, m=mean, s=scale: (x - m) / s)
        elif kind == "Dense":
            if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
                return None
            known, act = _activation(layer.activation)
            if not known:
                return None
            kernel = _array(layer.kernel)
            bias = _array(layer.bias) if layer.use_bias else None

            def dense(x: np.ndarray, k=kernel, b=bias, a=act) -> np.ndarray:
                y = x @ k
                if b is not None:
                    y += b
                return a(y) if a is not None else y

            steps.append(dense)
        elif kind == "Activation":
            known, act = _activation(layer.activation)
            if not known:
                return None
            if act is not None:
                steps.append(act)
        elif kind == "BatchNormalization":
            if getattr(layer, "axis", -1) not in (-1, [-1]):
                return None
            inv = 1.0 / np.sqrt(_array(layer.moving_variance) + np.float32(layer.epsilon))
            gamma = _array(layer.gamma) if layer.scale else np.float32(1.0)
            beta = _array(layer.beta) if layer.center else np.float32(0.0)
            mul = (inv * gamma).astype(np.float32)
            add = (beta - _array(layer.moving_mean) * mul).astype(np.float32)
            steps.append(lambda x, m=mul, a=add: x * m + a)
        else:
            return None

    def forward(x: np.ndarray) -> np.ndarray:
        for step in steps:
            x = step(x)
        return np.asarray(x, dtype=np.float32)

    return forward
