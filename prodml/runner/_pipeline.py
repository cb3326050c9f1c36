"""Building the KFP v2 pipeline of a config, and compiling it to YAML.

One task per configured stage, chained through artifacts (fetch -> Dataset -> train ->
Model -> export -> ModelRef JSON -> serve -> Endpoint JSON). The config travels as the
pipeline parameter ``config_json`` with every secret removed (:meth:`public_dict`); a
compiled file is re-read and refused if any secret value of the config appears in it.

Imported only by the kfp runners and ``prodml compile`` (it imports kfp). No postponed
annotations here: KFP reads the pipeline function's parameter annotations as objects.
"""

import json
import logging
import os
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from prodml.core.errors import RunnerError
from prodml.runner._config import RunnerSettings

log = logging.getLogger("prodml.runner")

if TYPE_CHECKING:
    from prodml.core.config import ProdmlConfig
    from prodml.core.interfaces import SecretEnv


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


def step_environment(config: "ProdmlConfig", stage: str) -> "list[SecretEnv]":
    """The Secret-backed environment of one step: ``runner.credentials_secret``'s keys.

    ``runner.secret_env`` (explicit {secret key: variable}) goes to every step; otherwise
    the steps that use the store (export, serve) get what the store asks for
    (:meth:`~prodml.core.interfaces.ModelStore.pod_environment`): its type is never looked at.

    Raises:
        RunnerError: the Secret is set but the store cannot say what a pod needs.
    """
    from prodml.core.config import STAGE_ROLES
    from prodml.core.interfaces import SecretEnv

    settings = settings_of(config)
    secret_name = settings.credentials_secret
    if not secret_name:
        return []
    if settings.secret_env is not None:
        return [
            SecretEnv(env=env, secret_name=secret_name, secret_key=key)
            for key, env in settings.secret_env.items()
        ]
    if config.section("store") is None or not (
        "store" in STAGE_ROLES.get(stage, ()) or (stage == "train" and _trainer_uses_store(config))
    ):
        return []
    store = _store(config)
    try:
        return list(store.pod_environment(secret_name))
    except NotImplementedError:
        raise RunnerError(
            f"runner.credentials_secret {secret_name!r} is set, but store {type(store).__name__} "
            "does not say which of its keys a pipeline pod needs (it has no pod_environment)",
            hint="set runner.secret_env: {SECRET_KEY: ENV_VAR, ...}",
        ) from None


def _trainer_uses_store(config: "ProdmlConfig") -> bool:
    """Whether the train step hands the bundle over through the store (a cluster training job)."""
    from prodml.core.plugins import default_registry

    if config.section("trainer") is None:
        return False
    return default_registry().create("trainer", config.section("trainer")).uses_store(config)


def _store(config: "ProdmlConfig") -> Any:
    from prodml.core.plugins import default_registry

    return default_registry().create("store", config.section("store"))


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
    # under a gate, export also takes the fetched dataset (to re-score the current latest)
    gated = config.gate is not None
    functions = {
        stage: getattr(_components, "export_gated" if stage == "export" and gated else stage)
        for stage in stages
    }
    components = {
        stage: dsl.component(functions[stage], base_image=settings.image, install_kfp_package=False)
        for stage in stages
    }
    for stage, component in components.items():
        # tasks are named after their stage (runners read outputs by stage), whichever function
        component.component_spec.name = stage
    environment = {stage: step_environment(config, stage) for stage in stages}

    @dsl.pipeline(
        name=pipeline_name(config),
        description=f"prodml {config.project}: {' -> '.join(stages)}",
    )
    def pipeline(config_json: str = config_json) -> None:
        previous: Any = None
        tasks: dict[str, Any] = {}
        for stage in stages:
            component = components[stage]
            if stage == "fetch":
                task = component(config_json=config_json)
            elif stage == "train":
                task = component(config_json=config_json, dataset=previous.outputs["dataset"])
            elif stage == "export" and gated:
                task = component(
                    config_json=config_json,
                    model=previous.outputs["model"],
                    dataset=tasks["fetch"].outputs["dataset"],
                )
            elif stage == "export":
                task = component(config_json=config_json, model=previous.outputs["model"])
            else:
                task = component(config_json=config_json, modelref=previous.output if previous else "")
            task.set_display_name(stage)
            task.set_caching_options(settings.caching_of(stage))
            retries = settings.retries_of(stage)
            if retries:
                task.set_retry(num_retries=retries)
            for secret_name in sorted({e.secret_name for e in environment[stage]}):
                from kfp import kubernetes

                keys = {e.secret_key: e.env for e in environment[stage] if e.secret_name == secret_name}
                kubernetes.use_secret_as_env(task, secret_name=secret_name, secret_key_to_env=keys)
            previous = tasks[stage] = task

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


def check_compiled(text: str, config: "ProdmlConfig") -> list[str]:
    """Validate a compiled pipeline and the serve step's objects against the pinned cluster versions.

    The PipelineSpec and its platform spec against the KFP backend's protos; the objects the
    serve step would apply (when the server renders any, :meth:`ModelServer.manifests`)
    against the KServe CRD and Kubernetes schemas, rendered without asking the store.

    Returns:
        Notes on what could not be checked (e.g. the server's SDK is not installed).

    Raises:
        ClusterCheckError: an object would be rejected.
        ConfigError: the serve step's settings cannot work on a cluster.
    """
    import yaml

    from prodml.core import cluster_check
    from prodml.core.errors import MissingDependencyError, StoreError
    from prodml.core.plugins import default_registry

    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    cluster_check.raise_for(cluster_check.check_pipeline(docs), "the compiled pipeline", file=_file(config))
    notes: list[str] = []
    registry = default_registry()
    if "train" in config.stages and config.section("trainer") is not None:
        # a cluster training job (a TFJob for trainer.distributed) is checked like the serve objects
        trainer = registry.create("trainer", config.section("trainer"))
        cluster_check.raise_for(
            cluster_check.check_objects(trainer.cluster_manifests(config)),
            "the train step's Kubernetes objects",
            file=_file(config),
        )
    if "serve" not in config.stages or config.section("server") is None or config.section("store") is None:
        return notes
    try:
        server = registry.create("server", config.section("server"))
        store = registry.create("store", config.section("store"))
        objects, _ = server.manifests(store, config.model_name, offline=True)
    except NotImplementedError:
        return notes  # a server that applies no Kubernetes objects
    except (MissingDependencyError, StoreError) as exc:
        notes.append(f"the serve step's Kubernetes objects were not checked: {exc.message}")
        return notes
    cluster_check.raise_for(
        cluster_check.check_objects(objects), "the serve step's manifests", file=_file(config)
    )
    return notes


def _file(config: "ProdmlConfig") -> "str | None":
    return str(config.source_file) if config.source_file else None


def compile_pipeline(
    config: "ProdmlConfig", output: Path, *, for_cluster: bool = True, check: bool = True
) -> Path:
    """Write the pipeline YAML of ``config`` to ``output`` (refused if it would carry a secret).

    With ``check`` (and ``for_cluster``) the pipeline and the serve step's objects are first
    validated against the pinned cluster versions (:func:`check_compiled`).
    """
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
        text = tmp.read_text(encoding="utf-8")
        check_no_secrets(text, config)
        if check and for_cluster:
            for note in check_compiled(text, config):
                log.warning("%s", note)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, output)
    return output
