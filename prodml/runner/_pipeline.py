"""Building the KFP v2 pipeline of a config, and compiling it to YAML.

One task per configured stage, chained through artifacts (fetch -> Dataset -> train ->
Model -> export -> ModelRef JSON -> serve -> Endpoint JSON). The config travels as the
pipeline parameter ``config_json`` with every secret removed (:meth:`public_dict`); a
compiled file is re-read and refused if any secret value of the config appears in it.

Imported only by the kfp runners and ``prodml compile`` (it imports kfp). No postponed
annotations here: KFP reads the pipeline function's parameter annotations as objects.
"""

import json
import os
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from prodml.core.errors import RunnerError
from prodml.runner._config import RunnerSettings

if TYPE_CHECKING:
    from prodml.core.config import ProdmlConfig

#: Environment variables a step needs from the Kubernetes Secret, by store type, as
#: {secret key: variable}; the store SDKs read these when the config carries no credential.
DEFAULT_SECRET_ENV: dict[str, dict[str, str]] = {
    "s3": {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"},
    "azure_blob": {"AZURE_STORAGE_CONNECTION_STRING": "AZURE_STORAGE_CONNECTION_STRING"},
}


def settings_of(config: "ProdmlConfig") -> RunnerSettings:
    """The runner section (every built-in runner config derives :class:`RunnerSettings`)."""
    runner = config.runner  # type: ignore[attr-defined]
    if isinstance(runner, RunnerSettings):
        return runner
    # a third-party runner: compile with the defaults
    return RunnerSettings()


def pipeline_name(config: "ProdmlConfig") -> str:
    """KFP pipeline name: ``prodml-<project>``."""
    return f"prodml-{config.project}"


def _rewrite_paths(value: Any, project: str, target: str) -> Any:
    """Map absolute paths inside ``project`` to the same place under ``target``."""
    if isinstance(value, dict):
        return {k: _rewrite_paths(v, project, target) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite_paths(v, project, target) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        if value == project:
            return target
        if value.startswith(project.rstrip(os.sep) + os.sep):
            rel = Path(os.path.relpath(value, project)).as_posix()
            return str(PurePosixPath(target) / rel)
    return value


def pipeline_config(config: "ProdmlConfig", *, for_cluster: bool) -> dict[str, Any]:
    """The secret-free config data the pipeline carries.

    For a cluster, paths inside the project folder (``runner.project_dir``, default the
    current directory) become paths under ``runner.image_workdir`` in the step image.
    """
    data = config.public_dict()
    if for_cluster:
        settings = settings_of(config)
        project = str(Path(settings.project_dir or Path.cwd()).resolve())
        data = _rewrite_paths(data, project, settings.image_workdir)
    return data


def secret_env(config: "ProdmlConfig") -> dict[str, str]:
    """{secret key: environment variable} taken from ``runner.credentials_secret``."""
    settings = settings_of(config)
    if settings.secret_env is not None:
        return dict(settings.secret_env)
    store = config.section("store")
    return dict(DEFAULT_SECRET_ENV.get(getattr(store, "type", ""), {}))


def build_pipeline(config: "ProdmlConfig", config_json: str) -> Any:
    """The ``@dsl.pipeline`` function of ``config``'s stages (its default parameter: ``config_json``)."""
    from kfp import dsl

    from prodml.runner import _components

    settings = settings_of(config)
    stages = tuple(config.stages)
    if stages[0] in ("train", "export"):
        raise RunnerError(
            f"a Kubeflow pipeline cannot start at {stages[0]!r}: its input is an artifact made by "
            "an earlier stage of the same pipeline",
            hint="start the stages at fetch (KFP caching can reuse it: runner.enable_caching), "
            "or use stages: [serve] to serve the store's version",
        )
    components = {
        stage: dsl.component(
            getattr(_components, stage), base_image=settings.image, install_kfp_package=False
        )
        for stage in stages
    }
    secret_name = settings.credentials_secret
    env = secret_env(config) if secret_name else {}
    if secret_name and not env:
        raise RunnerError(
            f"runner.credentials_secret {secret_name!r} is set but no keys are mapped to environment "
            "variables for this store type",
            hint="set runner.secret_env: {SECRET_KEY: ENV_VAR, ...}",
        )

    @dsl.pipeline(
        name=pipeline_name(config),
        description=f"prodml {config.project}: {' -> '.join(stages)}",
    )
    def pipeline(config_json: str = config_json) -> None:
        previous: Any = None
        for stage in stages:
            component = components[stage]
            if stage == "fetch":
                task = component(config_json=config_json)
            elif stage == "train":
                task = component(config_json=config_json, dataset=previous.outputs["dataset"])
            elif stage == "export":
                task = component(config_json=config_json, model=previous.outputs["model"])
            else:
                task = component(config_json=config_json, modelref=previous.output if previous else "")
            task.set_display_name(stage)
            task.set_caching_options(settings.caching_of(stage))
            retries = settings.retries_of(stage)
            if retries:
                task.set_retry(num_retries=retries)
            if secret_name:
                from kfp import kubernetes

                kubernetes.use_secret_as_env(task, secret_name=secret_name, secret_key_to_env=env)
            previous = task

    return pipeline


def check_no_secrets(text: str, config: "ProdmlConfig") -> None:
    """Raise RunnerError when any secret of ``config`` occurs in ``text`` (names the field only)."""
    from prodml.runner._step import secret_items

    for path, value in secret_items(config):
        if value and len(value) >= 4 and value in text:
            field = ".".join(str(p) for p in path)
            raise RunnerError(
                f"refusing to write the pipeline: it would contain the secret value of {field}",
                hint="a credential must not appear in any non-secret field; on a cluster, give it "
                "to the steps through runner.credentials_secret (a Kubernetes Secret)",
            )


def compile_pipeline(config: "ProdmlConfig", output: Path, *, for_cluster: bool = True) -> Path:
    """Write the pipeline YAML of ``config`` to ``output`` (refused if it would carry a secret)."""
    from kfp import compiler

    output = Path(output)
    if output.suffix not in (".yaml", ".yml", ".json"):
        raise RunnerError(f"pipeline file {output} must end in .yaml or .json", hint="e.g. -o pipeline.yaml")
    config_json = json.dumps(pipeline_config(config, for_cluster=for_cluster), sort_keys=True)
    pipeline = build_pipeline(config, config_json)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.tmp{output.suffix}")  # kfp picks the format by suffix
    try:
        compiler.Compiler().compile(pipeline, str(tmp))
        check_no_secrets(tmp.read_text(encoding="utf-8"), config)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, output)
    return output
