"""The ``kfp-local`` and ``kfp`` runners: the stages as a Kubeflow Pipelines v2 pipeline.

Both build the same pipeline (:mod:`prodml.runner._pipeline`): one lightweight Python
component per stage, the dataset and the bundle passed as KFP ``Dataset``/``Model``
artifacts, the config as a secret-free JSON parameter.

* ``kfp-local`` executes it with ``kfp.local`` and ``SubprocessRunner(use_venv=False)``:
  every step runs in a subprocess of this interpreter's environment, exactly as the
  compiled component would run in its pod. Artifacts land in the run folder
  ``<work_dir>/runs/<run-id>/kfp/``.
* ``kfp`` compiles it and submits it with ``kfp.Client`` to ``runner.host``; ``--wait``
  follows the run, printing each step's state.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prodml import hookimpl
from prodml.core.errors import GatedError, RunnerError
from prodml.core.interfaces import Endpoint, RunSummary
from prodml.core.plugins import Backend
from prodml.runner import _interrupt
from prodml.runner._config import PrintingRunner, RunnerSettings

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prodml.core.config import ProdmlConfig
    from prodml.core.plugins import Registry

log = logging.getLogger(__name__)

#: KFP run states after which a run will not change any more.
FINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"})
POLL_SECONDS = 5.0


class KfpLocalRunnerConfig(RunnerSettings):
    """Run the stages as the Kubeflow pipeline, executed on this machine by kfp.local."""

    type: Literal["kfp-local"]


class KfpRunnerConfig(RunnerSettings):
    """Submit the stages as a Kubeflow pipeline to a Kubeflow Pipelines cluster (runner.host)."""

    type: Literal["kfp"]


def compile_pipeline(config: ProdmlConfig, output: Path, *, check: bool = True) -> Path:
    """Write the cluster pipeline YAML of ``config`` (``prodml compile``), checked unless ``check`` is off."""
    from prodml.runner._pipeline import compile_pipeline as _compile

    return _compile(config, output, for_cluster=True, check=check)


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set ``values`` in this process's environment (kfp.local's step subprocesses inherit
    it) for the block; each variable gets its earlier value, or none, back afterwards."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _step_secrets(config: ProdmlConfig) -> AbstractContextManager[None]:
    """Hand the config's secrets to kfp.local's step subprocesses through their environment."""
    from prodml.runner._step import SECRETS_ENV, secret_items

    items = [(path, value) for path, value in secret_items(config) if path[:1] != ["runner"]]
    return _environ({SECRETS_ENV: json.dumps(items)} if items else {})


def _step_environment(gated_file: Path, force_promote: bool) -> AbstractContextManager[None]:
    """Tell kfp.local's export step where to record a gate's "no", and ``--force-promote``."""
    from prodml.runner._step import FORCE_PROMOTE_ENV, GATED_FILE_ENV

    return _environ({GATED_FILE_ENV: str(gated_file), FORCE_PROMOTE_ENV: "1" if force_promote else ""})


def _task_outputs(run_root: Path) -> dict[str, dict[str, Any]]:
    """{task name: executor output} of the (single) pipeline run under ``run_root``."""
    found: dict[str, dict[str, Any]] = {}
    for output in run_root.glob("*/*/executor_output.json"):
        found[output.parent.name] = json.loads(output.read_text(encoding="utf-8"))
    return found


class PipelineRunner(PrintingRunner):
    """Runners of the KFP pipeline; both compile the same pipeline YAML a KFP UI accepts."""

    def compile(self, config: ProdmlConfig, output: Path) -> Path:
        """Write the cluster pipeline YAML (the pipeline kfp-local executes locally)."""
        return compile_pipeline(config, output)


class KfpLocalRunner(PipelineRunner):
    """The pipeline executed by kfp.local in subprocesses of this environment."""

    config: KfpLocalRunnerConfig

    def run(
        self,
        config: ProdmlConfig,
        *,
        start_at: str | None = None,
        keep_serving: bool = False,
        registry: Registry | None = None,
        force_promote: bool = False,
        **_options: Any,
    ) -> RunSummary:
        """Execute the pipeline with kfp.local; show the endpoint; stop it unless ``keep_serving``.

        Raises:
            GatedError: the config's gate kept the exported version out of ``latest`` (the
                version is stored; the pipeline stopped before serve), exit status 3.
        """
        from kfp import local

        from prodml.core.logs import hold_output
        from prodml.runner._pipeline import build_pipeline, pipeline_config
        from prodml.runner._report import finish_run
        from prodml.runner._runs import RunFolder

        if start_at is not None:
            raise RunnerError(
                "--from resumes runs of the local runner; a kfp-local run reuses earlier steps "
                "through KFP caching instead",
                hint="turn caching on for the stages to reuse (runner.enable_caching: {fetch: true}), "
                "or use runner type local",
            )
        stages = tuple(config.stages)
        run = RunFolder.create(
            self.config.work_dir, runner=self.config.type, project=config.project, stages=stages
        )
        run.record["config_digest"] = config.digest()
        pipeline_root = run.root / "kfp"
        config_json = json.dumps(pipeline_config(config, for_cluster=False), sort_keys=True)
        pipeline = build_pipeline(config, config_json)
        print(
            f"prodml run {config.project}: {' -> '.join(stages)} (kfp-local runner)\n"
            f"  run {run.run_id}, pipeline root {pipeline_root}",
            file=self.out,
            flush=True,
        )
        local.init(
            runner=local.SubprocessRunner(use_venv=False),
            pipeline_root=str(pipeline_root),
            workspace_root=str(run.root / "workspace"),
            raise_on_error=True,
            enable_caching=True,
            cache_root=str(Path(self.config.work_dir) / "kfp-cache"),
        )
        started = time.perf_counter()
        spawned_before = _interrupt.descendants()
        gated_file = run.root / "gated.json"
        try:
            # kfp.local prints every step's executor input and log (hundreds of lines):
            # shown with -v, or when the run fails
            with (
                _step_secrets(config),
                _step_environment(gated_file, force_promote),
                warnings.catch_warnings(),
                _interrupt.interruptible(),
                hold_output("the kfp-local pipeline"),
            ):
                # kfp.local warns that runner.image may not be a Python image; the steps run
                # in this interpreter's environment, not in the image, by design
                warnings.filterwarnings("ignore", message=".*non-Python base image", category=RuntimeWarning)
                pipeline(config_json=config_json)
        except KeyboardInterrupt:
            _interrupt.pipeline_interrupted(
                self, run, config, pipeline_root, spawned_before, keep_serving=keep_serving, registry=registry
            )
            raise
        except RuntimeError as exc:
            if gated_file.is_file():
                # not a failure: the version is stored, latest and any server unchanged
                said = json.loads(gated_file.read_text(encoding="utf-8"))
                run.mark("export", "gated", error=said["message"])
                run.finish("gated", failed_stage="export")
                raise GatedError(said["message"], hint=said.get("hint")) from None
            run.finish("failed", error=str(exc))
            failed = [s for s in stages if s not in _task_outputs(pipeline_root)]
            where = f"the {failed[0]} step" if failed else "a step"
            raise RunnerError(
                f"the kfp-local pipeline failed in {where}: {exc}",
                hint="the step's own error is in its log above",
            ) from None
        total = time.perf_counter() - started

        outputs, seconds, endpoint = self._collect(run, pipeline_root, stages)
        seconds["pipeline"] = round(total, 3)
        dataset = outputs.get("fetch")
        summary = finish_run(
            run,
            config,
            runner_type=self.config.type,
            stages=stages,
            outputs=outputs,
            seconds=seconds,
            endpoint=endpoint,
            dataset_dir=Path(dataset) if dataset else None,
            keep_serving=keep_serving,
            registry=registry,
            out=self.out,
        )
        print(f"run {run.run_id} done in {total:.1f}s: {run.root / 'run.json'}", file=self.out)
        return summary

    @staticmethod
    def _collect(
        run: Any, pipeline_root: Path, stages: tuple[str, ...]
    ) -> tuple[dict[str, str], dict[str, float], Endpoint | None]:
        """Each stage's output (artifact folder or JSON) from the executor outputs on disk."""
        from prodml.core.interfaces import ModelRef

        tasks = _task_outputs(pipeline_root)
        outputs: dict[str, str] = {}
        seconds: dict[str, float] = {}
        endpoint = None
        for stage in stages:
            out = tasks.get(stage)
            if out is None:
                # a kfp.local cache hit runs nothing and writes nothing under this run's root
                run.record["stages"][stage] = {"status": "cached"}
                continue
            if stage in ("fetch", "train"):
                name = "dataset" if stage == "fetch" else "model"
                artifact = out["artifacts"][name]["artifacts"][0]
                outputs[stage] = artifact["uri"]
                if "seconds" in artifact.get("metadata", {}):
                    seconds[stage] = float(artifact["metadata"]["seconds"])
                status = {"status": "ok", "output": artifact["uri"], "result": artifact.get("metadata", {})}
            else:
                value = out["parameterValues"]["Output"]
                target = run.modelref_json if stage == "export" else run.endpoint_json
                target.write_text(value + "\n", encoding="utf-8")
                outputs[stage] = str(target)
                if stage == "export":
                    ModelRef.model_validate_json(value)
                else:
                    endpoint = Endpoint.model_validate_json(value)
                status = {"status": "ok", "output": str(target), "result": json.loads(value)}
            run.record["stages"][stage] = status
        run.save()
        return outputs, seconds, endpoint


def client_arguments(settings: RunnerSettings) -> dict[str, Any]:
    """Keyword arguments for ``kfp.Client`` from the runner config."""
    host = settings.host or os.environ.get("KF_PIPELINES_ENDPOINT")
    if not host:
        raise RunnerError(
            "runner type kfp needs the Kubeflow Pipelines API address",
            hint="set runner.host (e.g. http://localhost:8888 after "
            "`kubectl port-forward -n kubeflow svc/ml-pipeline 8888:8888`) or KF_PIPELINES_ENDPOINT",
        )
    kwargs: dict[str, Any] = {"host": host}
    if settings.namespace:
        kwargs["namespace"] = settings.namespace
    if settings.token is not None:
        kwargs["existing_token"] = settings.token.get_secret_value()
    return kwargs


def submission_arguments(config: ProdmlConfig, package: Path, *, now: float | None = None) -> dict[str, Any]:
    """Keyword arguments for ``Client.create_run_from_pipeline_package``.

    Caching is decided per task in the compiled pipeline (runner.enable_caching), so the
    run-level ``enable_caching`` is left unset; the config parameter is the compiled default.
    """
    import datetime as dt

    settings: RunnerSettings = config.runner  # type: ignore[attr-defined]
    stamp = dt.datetime.fromtimestamp(now if now is not None else time.time(), dt.UTC)
    kwargs: dict[str, Any] = {
        "pipeline_file": str(package),
        "arguments": {},
        "run_name": settings.run_name or f"{config.project}-{stamp:%Y%m%d-%H%M%S}",
        "experiment_name": settings.experiment or config.project,
    }
    if settings.namespace:
        kwargs["namespace"] = settings.namespace
    if settings.service_account:
        kwargs["service_account"] = settings.service_account
    return kwargs


def _unreachable(host: str, exc: BaseException) -> RunnerError:
    reason = str(getattr(exc, "reason", "") or exc).splitlines()[0][:200]
    return RunnerError(
        f"cannot reach Kubeflow Pipelines at {host}: {reason}",
        hint="check runner.host and that the API is reachable "
        "(kubectl port-forward -n kubeflow svc/ml-pipeline 8888:8888)",
    )


@contextmanager
def _quiet_retries() -> Iterator[None]:
    """urllib3 logs a warning per connection retry; the RunnerError raised after says it once."""
    pool_log = logging.getLogger("urllib3.connectionpool")
    level = pool_log.level
    pool_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        pool_log.setLevel(level)


def _state(value: Any) -> str:
    return str(value or "PENDING").upper()


class KfpRunner(PipelineRunner):
    """The pipeline submitted to a Kubeflow Pipelines cluster with kfp.Client."""

    config: KfpRunnerConfig
    stages_run_here = False

    def client(self) -> Any:
        """A ``kfp.Client`` for ``runner.host`` (nothing is sent until it is used)."""
        from kfp import Client

        kwargs = client_arguments(self.config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2 and later"
            try:
                return Client(**kwargs)
            except Exception as exc:
                raise _unreachable(kwargs["host"], exc) from None

    def run(
        self,
        config: ProdmlConfig,
        *,
        start_at: str | None = None,
        wait: bool = False,
        **_options: Any,
    ) -> RunSummary:
        """Compile, submit, and with ``wait`` follow the run to its end."""
        import tempfile

        if start_at is not None:
            raise RunnerError(
                "--from resumes runs of the local runner; on Kubeflow, KFP caching reuses steps",
                hint="turn caching on for the stages to reuse: runner.enable_caching",
            )
        host = client_arguments(self.config)["host"]
        client = self.client()
        with tempfile.TemporaryDirectory(prefix="prodml-kfp-") as tmp:
            package = compile_pipeline(config, Path(tmp) / "pipeline.yaml")
            kwargs = submission_arguments(config, package)
            try:
                with _quiet_retries():
                    result = client.create_run_from_pipeline_package(**kwargs)
            except Exception as exc:
                raise _unreachable(host, exc) from None
        run_id = result.run_id
        print(
            f"submitted {kwargs['run_name']} to {host} (experiment {kwargs['experiment_name']})\n"
            f"  run {run_id}: {host.rstrip('/')}/#/runs/details/{run_id}",
            file=self.out,
        )
        seconds: dict[str, float] = {}
        if wait:
            started = time.monotonic()
            state = self.follow(client, run_id, host)
            seconds["pipeline"] = round(time.monotonic() - started, 3)
            if state != "SUCCEEDED":
                raise RunnerError(
                    f"KFP run {run_id} ended {state}",
                    hint=f"see the failed step's logs: {host.rstrip('/')}/#/runs/details/{run_id}",
                )
        return RunSummary(
            run_id=run_id, runner=self.config.type, stages=tuple(config.stages), seconds=seconds
        )

    def follow(self, client: Any, run_id: str, host: str) -> str:
        """Poll the run until it ends, printing each step's state as it changes; return the run state."""
        seen: dict[str, str] = {}
        deadline = time.monotonic() + self.config.timeout
        while True:
            try:
                with _quiet_retries():
                    run = client.get_run(run_id)
            except Exception as exc:
                raise _unreachable(host, exc) from None
            details = getattr(run, "run_details", None)
            for task in getattr(details, "task_details", None) or []:
                name = task.display_name or task.task_id
                state = _state(task.state)
                if seen.get(name) != state:
                    seen[name] = state
                    print(f"  {name:<24} {state}", file=self.out, flush=True)
            state = _state(run.state)
            if state in FINAL_STATES:
                print(f"run {run_id}: {state}", file=self.out)
                return state
            if time.monotonic() > deadline:
                raise RunnerError(
                    f"KFP run {run_id} still {state} after {self.config.timeout:.0f}s",
                    hint="it keeps running on the cluster; raise runner.timeout to wait longer",
                )
            time.sleep(POLL_SECONDS)


@hookimpl
def prodml_backends() -> list[Backend]:
    return [
        Backend(
            "runner",
            "kfp-local",
            KfpLocalRunnerConfig,
            KfpLocalRunner,
            requires=("kfp",),
            extra="kfp",
            description="the Kubeflow pipeline, executed here by kfp.local",
        ),
        Backend(
            "runner",
            "kfp",
            KfpRunnerConfig,
            KfpRunner,
            requires=("kfp",),
            extra="kfp",
            description="the Kubeflow pipeline, submitted to a Kubeflow Pipelines cluster",
        ),
    ]
