"""What a runner shows the user: one line per stage, the endpoint, a sample prediction."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from prodml.core.interfaces import DatasetSchema, Endpoint, ModelRef, RunSummary, TrainResult

if TYPE_CHECKING:
    from prodml.core.config import ProdmlConfig
    from prodml.core.plugins import Registry

SAMPLE_ROWS = 3


def describe(result: Any) -> str:
    """A one-line summary of a stage's result for the progress display."""
    if isinstance(result, DatasetSchema):
        return f"{result.rows} rows x {len(result.feature_names)} features, label {result.label!r}"
    if isinstance(result, TrainResult):
        shown = ", ".join(f"{k} {v:.4g}" for k, v in list(result.metrics.items())[:4])
        return f"{result.epochs} epochs" + (f", {shown}" if shown else "")
    if isinstance(result, ModelRef):
        return f"{result.model_name} version {result.version} -> {result.uri}"
    if isinstance(result, Endpoint):
        return f"{result.model_name} at {result.url} ({result.protocol})"
    return str(result)


class Progress:
    """Per-stage progress lines: ``[2/4] train ... ok 5.2s  20 epochs, loss 0.012``."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stdout
        self.index = 0

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def header(self, text: str) -> None:
        self._print(text)

    def start(self, stage: str) -> None:
        self.index += 1
        self._print(f"[{self.index}/{self.total}] {stage} ...")

    def done(self, stage: str, seconds: float, result: Any) -> None:
        self._print(f"[{self.index}/{self.total}] {stage:<6} ok      {seconds:6.1f}s  {describe(result)}")

    def reused(self, stage: str, where: Path) -> None:
        self.index += 1
        self._print(f"[{self.index}/{self.total}] {stage:<6} reused          {where}")

    def retry(self, stage: str, attempt: int, retries: int, error: BaseException) -> None:
        self._print(f"[{self.index}/{self.total}] {stage:<6} failed, retry {attempt}/{retries}: {error}")

    def failed(self, stage: str, seconds: float, error: BaseException) -> None:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        self._print(f"[{self.index}/{self.total}] {stage:<6} FAILED  {seconds:6.1f}s  {first}")

    def gated(self, stage: str, seconds: float) -> None:
        """A gate kept the new version out of latest (the reason follows as the error)."""
        self._print(f"[{self.index}/{self.total}] {stage:<6} GATED   {seconds:6.1f}s  stored, latest kept")


def sample_instances(dataset_dir: Path, rows: int = SAMPLE_ROWS) -> list[list[float]] | None:
    """The first ``rows`` feature rows of a fetched dataset, as request instances."""
    from prodml.runner.stages import DATASET_FILE, SCHEMA_FILE

    data, schema_file = Path(dataset_dir) / DATASET_FILE, Path(dataset_dir) / SCHEMA_FILE
    if not (data.is_file() and schema_file.is_file()):
        return None
    import pandas as pd

    schema = DatasetSchema.read(schema_file)
    frame = pd.read_parquet(data, columns=list(schema.feature_names)).head(rows)
    return frame.astype("float64").to_numpy().tolist()


def show_endpoint(
    endpoint: Endpoint, dataset_dir: Path | None, out: TextIO | None = None, server: Any = None
) -> Any:
    """Print where the model answers and ``server``'s answer to the first rows of the dataset.

    Returns the predictions (or None when no sample could be sent: no dataset, no server,
    or a server backend without :meth:`~prodml.core.interfaces.ModelServer.predict`); a
    failed request is reported, not raised: the run itself succeeded.
    """
    out = out or sys.stdout
    print(f"endpoint: {endpoint.url}  model {endpoint.model_name} version {endpoint.version}", file=out)
    instances = sample_instances(dataset_dir) if dataset_dir is not None else None
    if not instances or server is None:
        return None
    try:
        predictions = server.predict(endpoint, instances)
    except NotImplementedError:
        return None
    except Exception as exc:  # the run succeeded; a failed sample is information, not an error
        print(f"sample prediction failed: {exc}", file=out)
        return None
    print(f"sample prediction for the first {len(instances)} rows: {_rounded(predictions)}", file=out)
    return predictions


def _rounded(value: Any, digits: int = 3) -> Any:
    """Floats to ``digits`` decimals for the console (float32 answers print 17 digits otherwise)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, list | tuple):
        return [_rounded(v, digits) for v in value]
    return value


def stop_server(endpoint: Endpoint, server: Any, out: TextIO | None = None) -> None:
    """Undeploy the model the serve stage started (the run's end without --keep-serving)."""
    out = out or sys.stdout
    server.undeploy(endpoint.model_name)
    print(f"server stopped (run with --keep-serving to leave {endpoint.model_name} running)", file=out)


def finish_run(
    run: Any,
    config: ProdmlConfig,
    *,
    runner_type: str,
    stages: tuple[str, ...],
    outputs: dict[str, str],
    seconds: dict[str, float],
    endpoint: Endpoint | None,
    dataset_dir: Path | None,
    keep_serving: bool,
    registry: Registry | None,
    out: TextIO,
) -> RunSummary:
    """End a successful run the same way for every runner.

    Shows the endpoint and a sample prediction, stops the server unless asked to keep it,
    and records the summary in the run folder. Interrupted here (Ctrl-C, SIGTERM), the run
    is marked ``interrupted`` and the server is stopped unless it was to be kept.
    """
    from prodml.runner._interrupt import interruptible, mark_interrupted, stop_started_server

    if endpoint is not None:
        from prodml.core.plugins import default_registry

        server = (registry or default_registry()).create("server", config.server)  # type: ignore[arg-type]
        try:
            with interruptible():
                show_endpoint(endpoint, dataset_dir, out, server)
        except KeyboardInterrupt:
            if stop_started_server(config, endpoint, keep_serving=keep_serving, registry=registry, out=out):
                run.record["server_stopped"] = True
            mark_interrupted(run, None, config, out)
            raise
        if not keep_serving:
            stop_server(endpoint, server, out)
            run.record["server_stopped"] = True
    summary = RunSummary(
        run_id=run.run_id,
        runner=runner_type,
        stages=stages,
        outputs=outputs,
        seconds=seconds,
        endpoint=endpoint,
    )
    run.finish("ok", summary=summary.model_dump(mode="json"))
    return summary
