"""The ``local`` runner: the configured stages in this process, one after the other.

Each run gets a folder ``<runner.work_dir>/runs/<run-id>/`` (work_dir defaults to
``.prodml`` next to the config file) holding every stage's output and ``run.json``;
``prodml run --from STAGE`` resumes the latest (or ``--run-id``) run, reusing the outputs of
the stages before STAGE.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prodml import hookimpl
from prodml.core.config import STAGES
from prodml.core.errors import GatedError, ProdmlError, RunnerError
from prodml.core.interfaces import Endpoint, RunSummary
from prodml.core.plugins import Backend
from prodml.runner._config import PrintingRunner, RunnerSettings
from prodml.runner._interrupt import interruptible, mark_interrupted, stop_started_server

if TYPE_CHECKING:
    from prodml.core.config import ProdmlConfig
    from prodml.core.plugins import Registry
    from prodml.runner._runs import RunFolder

log = logging.getLogger(__name__)


class LocalRunnerConfig(RunnerSettings):
    """Run the stages in this process, one after the other, with a progress line per stage."""

    type: Literal["local"]


def resume_command(config: ProdmlConfig, stage: str) -> str:
    """The command that resumes a failed run at ``stage``."""
    file = config.source_file
    shown = str(file) if file is not None else "FILE"
    with contextlib.suppress(ValueError):  # outside the current directory: keep it absolute
        shown = str(Path(shown).relative_to(Path.cwd()))
    return f"prodml run -c {shown} --from {stage}"


def check_start(config: ProdmlConfig, start_at: str | None) -> None:
    """Check that ``--from`` names one of the configured stages."""
    if start_at is not None and start_at not in config.stages:
        valid = ", ".join(config.stages)
        raise RunnerError(
            f"--from {start_at}: not one of the configured stages ({valid})",
            hint=f"--from takes one of: {valid}",
        )


class LocalRunner(PrintingRunner):
    """In-process, stage by stage, with a run folder and resume."""

    config: LocalRunnerConfig

    def run(
        self,
        config: ProdmlConfig,
        *,
        start_at: str | None = None,
        run_id: str | None = None,
        keep_serving: bool = False,
        force_promote: bool = False,
        registry: Registry | None = None,
        **_options: Any,
    ) -> RunSummary:
        """Run ``config.stages`` in order (from ``start_at`` when resuming a run).

        Args:
            config: the loaded config.
            start_at: resume the latest run (or ``run_id``) from this stage.
            run_id: the run to resume (default: the latest).
            keep_serving: leave the model server of the serve stage running.
            force_promote: move ``latest`` to the exported version even when the gate says no.
            registry: where plugins come from (default: the process-wide registry).

        Raises:
            RunnerError: a stage failed (the message says how to resume), or ``start_at``
                cannot be resumed from.
        """
        from prodml.runner._report import Progress, finish_run
        from prodml.runner._runs import RunFolder

        check_start(config, start_at)
        self._force_promote = force_promote
        if run_id is not None and start_at is None:
            raise RunnerError("--run-id selects a run to resume; give --from STAGE as well")
        work_dir = self.config.work_dir
        stages = tuple(config.stages)
        inputs: dict[str, str] = {}
        if start_at is not None:
            run = self._resumable(start_at, stages, run_id)
            inputs = dict(run.record.get("inputs", {}))
            run.record.setdefault("resumed", []).append({"from": start_at, "at": time.time()})
            for stale in ("interrupted_stage", "failed_stage", "finished_at"):
                run.record.pop(stale, None)
            run.record["status"] = "running"
            run.save()
        else:
            inputs = self._earlier_inputs(stages)
            run = RunFolder.create(work_dir, runner=self.config.type, project=config.project, stages=stages)
            run.record["inputs"] = inputs
            run.record["config_digest"] = config.digest()
            if config.source_file is not None:
                run.record["config_file"] = str(config.source_file)
            run.save()

        out = run.log_to(self.out)  # what the user sees is also kept as the run's run.log
        progress = Progress(len(stages), out)
        progress.header(
            f"prodml run {config.project}: {' -> '.join(stages)} ({self.config.type} runner)\n"
            f"  run {run.run_id} in {run.root}"
        )
        seconds: dict[str, float] = {}
        outputs: dict[str, str] = {}
        endpoint: Endpoint | None = None
        current: str | None = None
        try:
            with interruptible():
                for stage in stages:
                    if start_at is not None and STAGES.index(stage) < STAGES.index(start_at):
                        outputs[stage] = str(run.produced(stage))
                        progress.reused(stage, run.produced(stage))
                        continue
                    outputs[stage] = str(run.output_of(stage))
                    current = stage
                    result = self._run_stage(stage, config, run, inputs, progress, registry)
                    current = None
                    seconds[stage] = run.record["stages"][stage]["seconds"]
                    if stage == "serve":
                        endpoint = result

                dataset_dir = run.dataset_dir if run.dataset_dir.is_dir() else None
                if dataset_dir is None and "fetch" in outputs and Path(outputs["fetch"]).is_dir():
                    dataset_dir = Path(outputs["fetch"])
                if dataset_dir is None and "fetch" in inputs:
                    dataset_dir = Path(inputs["fetch"])
                summary = finish_run(
                    run,
                    config,
                    runner_type=self.config.type,
                    stages=stages,
                    outputs=outputs,
                    seconds=seconds,
                    endpoint=endpoint,
                    dataset_dir=dataset_dir,
                    keep_serving=keep_serving,
                    registry=registry,
                    out=out,
                )
        except KeyboardInterrupt:
            if run.status == "interrupted":
                raise  # finish_run recorded it already
            # a serve stage cut short stopped the server it was starting itself (deploy's cleanup)
            if stop_started_server(config, endpoint, keep_serving=keep_serving, registry=registry, out=out):
                run.record["server_stopped"] = True
            mark_interrupted(run, current, config, out)
            raise
        print(f"run {run.run_id} done: {run.root / 'run.json'}", file=out)
        return summary

    def _earlier_inputs(self, stages: tuple[str, ...]) -> dict[str, str]:
        """Inputs of a config whose stages start after fetch: the latest run's outputs.

        ``stages: [train, export, serve]`` retrains on the dataset the latest run fetched;
        ``[export, serve]`` exports its bundle. ``[serve]`` needs no run: it serves the
        store's version.
        """
        from prodml.runner._runs import RunFolder

        first = stages[0]
        if first in ("fetch", "serve"):
            return {}
        needed = STAGES[STAGES.index(first) - 1]
        earlier, _ = RunFolder.latest_with(self.config.work_dir, (needed,))
        if earlier is None:
            raise RunnerError(
                f"stages start at {first!r}, which needs the {needed} output of an earlier run, "
                f"and there is none in {Path(self.config.work_dir) / 'runs'}",
                hint=f"add {needed!r} to stages, or run a config that includes it first",
            )
        return {needed: str(earlier.produced(needed))}

    def _input_of(self, stage: str, run: RunFolder, inputs: dict[str, str]) -> Path | None:
        if stage == "fetch":
            return None
        previous = STAGES[STAGES.index(stage) - 1]
        if previous in inputs:
            return Path(inputs[previous])
        if previous in run.record.get("stages", {}):
            return run.produced(previous)
        return None  # serve without export: the store's version

    def _resumable(self, start_at: str, stages: tuple[str, ...], run_id: str | None) -> RunFolder:
        """The run ``--from start_at`` continues: ``run_id``, else the newest run that can be."""
        from prodml.runner._runs import RunFolder

        work_dir = self.config.work_dir
        needed = tuple(s for s in STAGES[: STAGES.index(start_at)] if s in stages)
        if run_id is not None or not needed:
            run = RunFolder.open(work_dir, run_id)
            run.check_resumable(start_at, stages)
            return run
        run, skipped = RunFolder.latest_with(work_dir, needed)
        if run is None:
            newest = RunFolder.open(work_dir)  # "no earlier run" when there is none at all
            newest.check_resumable(start_at, stages)  # names the missing output
            raise RunnerError(f"no run in {Path(work_dir) / 'runs'} can be resumed from {start_at!r}")
        note = ""
        if skipped:
            shown = ", ".join(f"{r.run_id} ({_left_as(r)})" for r in skipped[:3])
            more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
            note = f"; skipped newer runs without the {needed[-1]} output: {shown}{more}"
        print(
            f"resuming run {run.run_id} from {start_at} (the latest run with the {needed[-1]} output{note})",
            file=self.out,
            flush=True,
        )
        return run

    def _run_stage(
        self,
        stage: str,
        config: ProdmlConfig,
        run: RunFolder,
        inputs: dict[str, str],
        progress: Any,
        registry: Registry | None,
    ) -> Any:
        from prodml.runner import stages as st

        source = self._input_of(stage, run, inputs)
        retries = self.config.retries_of(stage)
        progress.start(stage)
        run.mark(stage, "running")
        started = time.perf_counter()
        attempt = 0
        while True:
            st.remove_output(run.output_of(stage))
            try:
                if stage == "fetch":
                    result = st.fetch(config, run.dataset_dir, registry=registry)
                elif stage == "train":
                    result = st.train(config, source, run.bundle_dir, registry=registry)  # type: ignore[arg-type]
                elif stage == "export":
                    fetched = run.dataset_dir if run.dataset_dir.is_dir() else inputs.get("fetch")
                    result = st.export(
                        config,
                        source,  # type: ignore[arg-type]
                        run.root,
                        registry=registry,
                        dataset_dir=Path(fetched) if fetched else None,
                        run_id=run.run_id,
                        force_promote=getattr(self, "_force_promote", False),
                    )
                else:
                    result = st.serve(config, source, run.root, registry=registry)
                break
            except GatedError as exc:
                # not a failure: the version is stored and latest (and the server) kept
                elapsed = time.perf_counter() - started
                progress.gated(stage, elapsed)
                run.mark(stage, "gated", error=exc.message, seconds=round(elapsed, 3))
                run.finish("gated", failed_stage=stage)
                raise
            except KeyboardInterrupt:
                run.mark(stage, "interrupted", seconds=round(time.perf_counter() - started, 3))
                raise
            except Exception as exc:
                if attempt < retries:
                    attempt += 1
                    log.debug("stage %s failed, retrying", stage, exc_info=True)
                    progress.retry(stage, attempt, retries, exc)
                    continue
                elapsed = time.perf_counter() - started
                log.debug("stage %s failed", stage, exc_info=True)
                progress.failed(stage, elapsed, exc)
                run.mark(stage, "failed", error=str(exc), seconds=round(elapsed, 3), attempts=attempt + 1)
                run.finish("failed", failed_stage=stage)
                resume = resume_command(config, stage)
                if isinstance(exc, ProdmlError):
                    print(f"  resume after fixing it: {resume}", file=progress.stream)
                    raise
                raise RunnerError(
                    f"stage {stage!r} failed: {type(exc).__name__}: {exc}",
                    hint=f"fix the cause (prodml -vv run ... shows the traceback), then: {resume}",
                ) from exc
        elapsed = time.perf_counter() - started
        progress.done(stage, elapsed, result)
        run.mark(
            stage,
            "ok",
            seconds=round(elapsed, 3),
            attempts=attempt + 1,
            output=str(run.output_of(stage)),
            result=result.model_dump(mode="json"),
        )
        return result


def _left_as(run: RunFolder) -> str:
    """How a run ended, for the message that says it was skipped."""
    where = run.record.get("interrupted_stage") or run.record.get("failed_stage")
    return f"{run.status} in {where}" if where else run.status


@hookimpl
def prodml_backends() -> list[Backend]:
    return [
        Backend(
            "runner",
            "local",
            LocalRunnerConfig,
            LocalRunner,
            requires=(),
            extra=None,
            description="in-process, stage by stage, with resume (--from)",
        )
    ]
