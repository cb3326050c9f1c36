"""Ctrl-C and SIGTERM during a run: one exception, a true run record, nothing left running.

Every runner treats SIGINT and SIGTERM alike (a ``KeyboardInterrupt`` in the main thread),
marks the run ``interrupted`` with the stage it was in, stops a model server the run started
and did not hand over (``--keep-serving``), stops the step processes it spawned, and says how
to resume. The CLI turns the ``KeyboardInterrupt`` into exit status 130.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from prodml.core.config import ProdmlConfig
    from prodml.core.interfaces import Endpoint
    from prodml.core.plugins import Registry
    from prodml.runner._runs import RunFolder


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt`` like Ctrl-C does (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def descendants(pid: int | None = None) -> set[int]:
    """The pids of every live descendant of ``pid`` (default: this process), from /proc."""
    root = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: the fields start after the last ')'
        fields = text.rsplit(")", 1)[-1].split()
        if len(fields) < 2 or fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def stop_processes(pids: set[int], *, grace: float = 15.0) -> None:
    """SIGINT ``pids`` (so each cleans up as on Ctrl-C), wait ``grace`` s, then SIGKILL what is left."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        left = pids & descendants()
        if not left:
            return
        time.sleep(0.1)
    for pid in pids & descendants():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def stop_started_server(
    config: ProdmlConfig,
    endpoint: Endpoint | None,
    *,
    keep_serving: bool,
    registry: Registry | None,
    out: TextIO,
) -> bool:
    """Undeploy the server of a finished serve stage unless the run hands it over; True when stopped."""
    if endpoint is None or keep_serving:
        return False
    from prodml.core.plugins import default_registry
    from prodml.runner._report import stop_server

    try:
        server = (registry or default_registry()).create("server", config.server)  # type: ignore[attr-defined]
        stop_server(endpoint, server, out)
    except Exception as exc:  # the interruption is what the user must see; say what is left
        print(f"could not stop the model server at {endpoint.url}: {exc}", file=out)
        return False
    return True


def mark_interrupted(run: RunFolder, stage: str | None, config: ProdmlConfig, out: TextIO) -> None:
    """Record the interruption in run.json and tell the user how to resume."""
    from prodml.runner.local import resume_command

    entry = run.record.setdefault("stages", {}).get(stage or "", None)
    if stage is not None and entry is not None and entry.get("status") not in ("ok", "reused"):
        run.mark(stage, "interrupted")
    run.finish("interrupted", interrupted_stage=stage)
    where = f"during the {stage} stage" if stage else "after its stages"
    print(f"interrupted {where}: run {run.run_id} is marked interrupted", file=out, flush=True)
    if stage is not None:
        print(f"  resume: {resume_command(config, stage)}", file=out, flush=True)


def pipeline_interrupted(
    runner: Any,
    run: RunFolder,
    config: ProdmlConfig,
    pipeline_root: Path,
    spawned_before: set[int],
    *,
    keep_serving: bool,
    registry: Registry | None,
) -> None:
    """A kfp-local pipeline was interrupted: stop its steps, record what finished and where it stopped.

    kfp.local's step subprocesses get Ctrl-C from the terminal themselves, but not a SIGTERM
    sent to this process alone; each step is sent SIGINT, so the step that was deploying a
    model server stops the server it started, and killed when it does not end.
    """
    from prodml.runner.kfp import _task_outputs

    stop_processes(descendants() - spawned_before)
    stages = tuple(config.stages)
    _, _, endpoint = runner._collect(run, pipeline_root, stages)
    done = set(_task_outputs(pipeline_root))
    # a task's folder appears when it starts; a cache hit never gets one in this run
    started = {p.name for p in Path(pipeline_root).glob("*/*") if p.is_dir()}
    running = [s for s in stages if s in started and s not in done]
    pending = [s for s in stages if s not in done]
    current = (running or pending or [None])[0]
    after_current = False
    for stage in stages:
        if stage == current:
            run.record["stages"][stage] = {"status": "interrupted"}
            after_current = True
        elif after_current:
            run.record["stages"][stage] = {"status": "pending"}
        # before it: "ok" with its output, or "cached" (a cache hit ran nothing in this run)
    run.save()
    if stop_started_server(config, endpoint, keep_serving=keep_serving, registry=registry, out=runner.out):
        run.record["server_stopped"] = True
    mark_interrupted(run, current, config, runner.out)
