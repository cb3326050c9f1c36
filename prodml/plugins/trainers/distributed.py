"""Multi-worker training: ``trainer.distributed`` and the local launcher of real TF workers.

prodml does not distribute training itself: TensorFlow's ``MultiWorkerMirroredStrategy``
does (synchronous data parallelism, gradients all-reduced every step). prodml starts the
workers, tells each where the others are (``TF_CONFIG``), hands them the fetched frame and
collects the bundle the chief (worker 0) writes. Where the workers run:

* ``processes`` — N processes on this machine talking over loopback. The same code path as
  on a cluster; this is how the tests prove the distributed path really trains.
* ``tfjob`` — N pods of a Kubeflow Training Operator TFJob (see
  :mod:`prodml.plugins.trainers.tfjob`); the operator sets ``TF_CONFIG``.
* ``auto`` (default) — ``tfjob`` inside a Kubernetes pod (a cluster pipeline step),
  ``processes`` elsewhere.

This module imports no TensorFlow; the workers do (:mod:`._worker`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from prodml.core.errors import TrainingError
from prodml.core.interfaces import TrainResult, TrainSpec

if TYPE_CHECKING:
    import pandas as pd

    from prodml.plugins.trainers.keras import KerasTrainerConfig

log = logging.getLogger("prodml.trainer")

#: Files a worker reads from and writes to its work folder.
FRAME_FILE = "frame.parquet"
SPEC_FILE = "spec.json"
CONFIG_FILE = "trainer.json"
RESULT_FILE = "result.json"
ERROR_FILE = "error-{index}.json"
#: Where the workers' logs go, beside the bundle folder (in the run folder).
LOGS_SUFFIX = "-workers"
#: The module each worker process runs.
WORKER_MODULE = "prodml.plugins.trainers._worker"
#: Lines of a failed worker's log quoted in the error.
TAIL_LINES = 15


class DistributedTraining(BaseModel):
    """How many TensorFlow workers train the model, and where they run."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    workers: int = Field(
        1,
        ge=1,
        le=256,
        description="TensorFlow workers training in sync (MultiWorkerMirroredStrategy); 1 = no distribution",
    )
    strategy: Literal["multi_worker_mirrored"] = Field(
        "multi_worker_mirrored",
        description="tf.distribute strategy: synchronous data parallelism, each worker holds the whole model",
    )
    backend: Literal["auto", "processes", "tfjob"] = Field(
        "auto",
        description="where the workers run: `processes` on this machine, `tfjob` as a Kubeflow TFJob "
        "(Training Operator); `auto`: tfjob inside a Kubernetes pod, processes elsewhere",
    )
    resources: dict[str, Any] | None = Field(
        None,
        description="tfjob: container resources of each worker pod, e.g. "
        "{requests: {cpu: '2', memory: 4Gi}, limits: {memory: 4Gi}}",
    )
    communication_timeout: float = Field(
        300,
        gt=0,
        description="seconds a worker waits for the others in one collective step before failing",
    )
    job_timeout: float = Field(
        6 * 3600, gt=0, description="seconds the whole distributed training may take before it is stopped"
    )

    @property
    def enabled(self) -> bool:
        """Whether more than one worker trains."""
        return self.workers > 1

    def resolved_backend(self) -> str:
        """``processes`` or ``tfjob``: ``auto`` is ``tfjob`` inside a Kubernetes pod."""
        if self.backend != "auto":
            return self.backend
        return "tfjob" if os.environ.get("KUBERNETES_SERVICE_HOST") else "processes"


def tf_config(addresses: list[str], index: int) -> str:
    """The ``TF_CONFIG`` of worker ``index`` in a cluster of ``addresses`` (worker 0 is chief)."""
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on loopback (held open together, so no duplicates)."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def write_inputs(workdir: Path, config: KerasTrainerConfig, frame: pd.DataFrame, spec: TrainSpec) -> None:
    """What every worker reads: the frame, the spec and the trainer config (no secrets in it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(workdir / FRAME_FILE, index=False)
    spec.write(workdir / SPEC_FILE)
    (workdir / CONFIG_FILE).write_text(config.model_dump_json(), encoding="utf-8")


def workers_log_dir(out_dir: Path) -> Path:
    """Where the workers' logs are kept: ``<bundle folder>-workers/`` in the run folder."""
    return out_dir.parent / f"{out_dir.name}{LOGS_SUFFIX}"


def remove_partial_bundles(out_dir: Path) -> None:
    """Remove what a killed chief left half-written (the bundle's hidden staging folders)."""
    for partial in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        shutil.rmtree(partial, ignore_errors=True)


def train(config: KerasTrainerConfig, frame: pd.DataFrame, spec: TrainSpec, out_dir: Path) -> TrainResult:
    """Train with ``config.distributed.workers`` workers; the chief writes the bundle to ``out_dir``."""
    dist = config.distributed
    assert dist is not None and dist.enabled
    backend = dist.resolved_backend()
    if backend == "tfjob":
        from prodml.plugins.trainers import tfjob

        return tfjob.train_in_cluster(config, frame, spec, out_dir)
    return train_in_processes(config, frame, spec, out_dir)


def train_in_processes(
    config: KerasTrainerConfig, frame: pd.DataFrame, spec: TrainSpec, out_dir: Path
) -> TrainResult:
    """Run ``workers`` TensorFlow worker processes on loopback; return the chief's result.

    Every worker must exit 0. When one fails (or is killed), the others are stopped, no
    bundle is left behind and the error names the worker and quotes its log.
    """
    dist = config.distributed
    assert dist is not None
    out_dir = Path(os.path.abspath(out_dir))
    workdir = out_dir.parent / f".{out_dir.name}.inputs-{secrets.token_hex(4)}"
    logs = workers_log_dir(out_dir)
    logs.mkdir(parents=True, exist_ok=True)
    write_inputs(workdir, config, frame, spec)
    ports = free_ports(dist.workers)
    addresses = [f"127.0.0.1:{p}" for p in ports]
    log.info("training with %d TensorFlow workers on %s (logs: %s)", dist.workers, ", ".join(addresses), logs)
    procs: list[subprocess.Popen] = []
    handles = []
    try:
        for index in range(dist.workers):
            env = {**os.environ, "TF_CONFIG": tf_config(addresses, index), "TF_CPP_MIN_LOG_LEVEL": "2"}
            handle = open(logs / f"worker-{index}.log", "wb")  # noqa: SIM115 - closed in finally
            handles.append(handle)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", WORKER_MODULE, str(workdir), str(index), str(out_dir)],
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                )
            )
        _wait_all(procs, workdir, logs, dist.job_timeout)
        if not (workdir / RESULT_FILE).is_file() or not out_dir.is_dir():
            raise TrainingError(
                f"the {dist.workers} workers exited without a bundle from the chief (worker 0)",
                hint=f"read the workers' logs in {logs}",
            )
        return TrainResult.model_validate_json((workdir / RESULT_FILE).read_text(encoding="utf-8"))
    except BaseException:
        _stop(procs)
        remove_partial_bundles(out_dir)
        if out_dir.is_dir() and not (workdir / RESULT_FILE).is_file():
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        for handle in handles:
            handle.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_all(procs: list[subprocess.Popen], workdir: Path, logs: Path, timeout: float) -> None:
    """Wait until every worker exited 0; on a failure raise the error of the worker that caused it."""
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs) or any(p.returncode for p in procs):
        failed = [i for i, p in enumerate(procs) if p.returncode]
        if failed:
            # the peers of a dead worker fail too, a moment later: let them, then blame the cause
            time.sleep(0.5)
            raise _worker_error(_cause(procs, workdir), len(procs), procs, workdir, logs)
        if time.monotonic() > deadline:
            raise TrainingError(
                f"distributed training did not finish within trainer.distributed.job_timeout ({timeout:g} s)",
                hint=f"raise job_timeout, or read the workers' logs in {logs}",
            )
        time.sleep(0.05)


def _cause(procs: list[subprocess.Popen], workdir: Path) -> int:
    """The failed worker to blame: one killed by a signal, else one that reported an error."""
    failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
    killed = [i for i in failed if (procs[i].returncode or 0) < 0]
    reported = [i for i in failed if (workdir / ERROR_FILE.format(index=i)).is_file()]
    return (killed or reported or failed)[0]


def _worker_error(
    index: int, workers: int, procs: list[subprocess.Popen], workdir: Path, logs: Path
) -> TrainingError:
    """The failing worker's own TrainingError when it wrote one, else its exit and log tail."""
    reported = workdir / ERROR_FILE.format(index=index)
    if reported.is_file():
        data = json.loads(reported.read_text(encoding="utf-8"))
        return TrainingError(f"worker {index} of {workers}: {data['message']}", hint=data.get("hint"))
    code = procs[index].returncode or 0
    how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
    tail = _tail(logs / f"worker-{index}.log")
    return TrainingError(
        f"training worker {index} of {workers} {how}; the other workers were stopped and no bundle "
        "was written" + (f". Last lines of its log:\n{tail}" if tail else ""),
        hint=f"the full logs are in {logs}",
    )


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every running worker's process group, then SIGKILL what is left."""
    running = [p for p in procs if p.poll() is None]
    for p in running:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    for p in running:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
