"""The KFP components of the prodml pipeline: one per stage.

KFP ships each function's *source* to its step and runs it there with ``kfp.dsl``'s names
in scope, so the bodies import what they need and delegate to :mod:`prodml.runner._step`
(the step image has prodml installed). No ``from __future__ import annotations`` here: KFP
reads the parameter annotations as objects to type the component's inputs and outputs.
"""

from kfp.dsl import Dataset, Input, Model, Output


def fetch(config_json: str, dataset: Output[Dataset]):
    """prodml fetch: the training frame from the configured data source."""
    from prodml.runner._step import run_fetch

    dataset.metadata.update(run_fetch(config_json, dataset.path))


def train(config_json: str, dataset: Input[Dataset], model: Output[Model]):
    """prodml train: the user's Keras code on the dataset; the Model artifact is the bundle."""
    from prodml.runner._step import run_train

    model.metadata.update(run_train(config_json, dataset.path, model.path))


def export(config_json: str, model: Input[Model]) -> str:
    """prodml export: push the bundle to the model store; returns the ModelRef JSON."""
    from prodml.runner._step import run_export

    return run_export(config_json, model.path)


def export_gated(config_json: str, model: Input[Model], dataset: Input[Dataset]) -> str:
    """prodml export under a `gate:`: also reads the dataset, to re-score the current latest on it."""
    from prodml.runner._step import run_export

    return run_export(config_json, model.path, dataset.path)


def serve(config_json: str, modelref: str) -> str:
    """prodml serve: deploy the exported version with KServe; returns the Endpoint JSON."""
    from prodml.runner._step import run_serve

    return run_serve(config_json, modelref)
