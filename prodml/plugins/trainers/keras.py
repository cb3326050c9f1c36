"""The ``keras`` trainer backend."""

from __future__ import annotations

from typing import Literal

from prodml import hookimpl
from prodml.core.config import PluginConfig
from prodml.core.interfaces import Trainer
from prodml.core.plugins import Backend


class KerasTrainerConfig(PluginConfig):
    """Config of the ``keras`` trainer."""

    type: Literal["keras"]


class KerasTrainer(Trainer):
    """TensorFlow/Keras model code."""


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
            description="TensorFlow/Keras model code",
        )
    ]
