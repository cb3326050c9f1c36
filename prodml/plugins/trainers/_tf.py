"""TensorFlow and Keras for the trainer's TensorFlow side, imported once, quietly.

TensorFlow's C++ start-up lines (CPU features, oneDNN) are noise for our users. From 2.19 on
they are written through absl before ``TF_CPP_MIN_LOG_LEVEL`` is read, so the variable alone
no longer keeps them out: :func:`prodml.core.logs.import_tensorflow` filters them to it.
Modules import ``tf`` and ``keras`` from here, so TensorFlow's first import is this one.
"""

import os

from prodml.core.logs import import_tensorflow

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = import_tensorflow()

import keras  # noqa: E402 - TensorFlow first, through the filter above

__all__ = ["keras", "tf"]
