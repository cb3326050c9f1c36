"""Run folders: ``<work_dir>/runs/<run-id>/``, one per ``prodml run``.

::

    runs/<run-id>/dataset/        fetch: dataset.parquet, schema.json
    runs/<run-id>/bundle/         train: the model bundle
    runs/<run-id>/modelref.json   export
    runs/<run-id>/endpoint.json   serve
    runs/<run-id>/run.json        what ran, when, how long, with which result
    runs/<run-id>/run.log         the progress lines the runner printed (secrets masked)
    runs/latest                   the id of the newest run (what ``--from`` resumes)

A resumed run (``--from STAGE``) continues in the same folder: the outputs of the stages
before STAGE are reused, the later ones are replaced.
"""

from __future__ import annotations

import io
import json
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from prodml.core.config import STAGES
from prodml.core.errors import RunnerError
from prodml.runner import stages as st

RUN_FILE = "run.json"
LOG_FILE = "run.log"
LATEST = "latest"


def new_run_id(now: datetime | None = None) -> str:
    """A run id that sorts by start time: ``20261129T173000Z-3fa2b1``."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class RunFolder:
    """One run's folder and its ``run.json`` record."""

    def __init__(self, root: Path, record: dict[str, Any]) -> None:
        self.root = Path(root)
        self.record = record

    @property
    def run_id(self) -> str:
        return self.root.name

    # -- where each stage reads and writes ------------------------------------------------

    @property
    def dataset_dir(self) -> Path:
        return self.root / "dataset"

    @property
    def bundle_dir(self) -> Path:
        return self.root / "bundle"

    @property
    def modelref_json(self) -> Path:
        return self.root / st.MODELREF_FILE

    @property
    def endpoint_json(self) -> Path:
        return self.root / st.ENDPOINT_FILE

    def output_of(self, stage: str) -> Path:
        """The file or folder ``stage`` writes in this run."""
        return {
            "fetch": self.dataset_dir,
            "train": self.bundle_dir,
            "export": self.modelref_json,
            "serve": self.endpoint_json,
        }[stage]

    def produced(self, stage: str) -> Path:
        """Where ``stage``'s output of this run is: as recorded (a kfp-local run keeps it in the
        pipeline's artifact folders), else where this run folder puts it."""
        recorded = self.record.get("stages", {}).get(stage, {}).get("output")
        return Path(recorded) if recorded else self.output_of(stage)

    def has_output(self, stage: str) -> bool:
        """Whether ``stage`` finished in this run (its output is there and was recorded ok)."""
        entry = self.record.get("stages", {}).get(stage, {})
        return entry.get("status") in ("ok", "reused") and self.produced(stage).exists()

    @property
    def status(self) -> str:
        """``running``, ``ok``, ``failed`` or ``interrupted`` (a killed run stays ``running``)."""
        return str(self.record.get("status", "?"))

    # -- creating, finding, recording -------------------------------------------------------

    @classmethod
    def create(cls, work_dir: Path, *, runner: str, project: str, stages: tuple[str, ...]) -> RunFolder:
        """Start a new run folder and make it the latest."""
        runs = Path(work_dir) / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        while True:
            root = runs / new_run_id()
            try:
                root.mkdir()
                break
            except FileExistsError:  # two runs started in the same second
                continue
        record = {
            "run_id": root.name,
            "project": project,
            "runner": runner,
            "stages": {s: {"status": "pending"} for s in stages},
            "status": "running",
            "started_at": _now(),
        }
        run = cls(root, record)
        run.save()
        tmp = runs / (LATEST + ".tmp")
        tmp.write_text(root.name + "\n", encoding="utf-8")
        os.replace(tmp, runs / LATEST)
        return run

    @classmethod
    def open(cls, work_dir: Path, run_id: str | None = None) -> RunFolder:
        """An earlier run: ``run_id``, or the latest one.

        Raises:
            RunnerError: there is no such run.
        """
        runs = Path(work_dir) / "runs"
        if run_id is None:
            pointer = runs / LATEST
            if not pointer.is_file():
                raise RunnerError(
                    f"there is no earlier run to resume in {runs}",
                    hint="run all stages once first: prodml run -c FILE (without --from)",
                )
            run_id = pointer.read_text(encoding="utf-8").strip()
        root = runs / run_id
        record_file = root / RUN_FILE
        if not record_file.is_file():
            known = sorted(p.parent.name for p in runs.glob(f"*/{RUN_FILE}"))
            shown = ", ".join(known[-5:]) or "none"
            raise RunnerError(f"run {run_id!r} not found in {runs}; recent runs: {shown}")
        return cls(root, json.loads(record_file.read_text(encoding="utf-8")))

    def log_to(self, stream: TextIO) -> TextIO:
        """``stream``, with everything written to it also appended to this run's ``run.log``."""
        return _LogTee(stream, self.root / LOG_FILE)

    @classmethod
    def latest_with(cls, work_dir: Path, needed: tuple[str, ...]) -> tuple[RunFolder | None, list[RunFolder]]:
        """The newest run holding the outputs of every stage in ``needed``, and the newer runs skipped.

        Runs left ``running`` (killed) or ``interrupted`` before those stages finished have
        not got them and are passed over, so ``--from`` never resumes a run it cannot.
        """
        runs = Path(work_dir) / "runs"
        skipped: list[RunFolder] = []
        for record_file in sorted(runs.glob(f"*/{RUN_FILE}"), key=lambda p: p.parent.name, reverse=True):
            try:
                run = cls(record_file.parent, json.loads(record_file.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
            if all(run.has_output(stage) for stage in needed):
                return run, skipped
            skipped.append(run)
        return None, skipped

    def save(self) -> None:
        """Write ``run.json`` atomically."""
        tmp = self.root / (RUN_FILE + ".tmp")
        tmp.write_text(json.dumps(self.record, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, self.root / RUN_FILE)

    def mark(self, stage: str, status: str, **fields: Any) -> None:
        """Record ``stage``'s status (``running``/``ok``/``failed``/``reused``) and details."""
        entry = self.record.setdefault("stages", {}).setdefault(stage, {})
        if status == "running":  # a rerun of the stage replaces what an earlier attempt recorded
            entry.clear()
            entry["started_at"] = _now()
        entry.update(status=status, **fields)
        self.save()

    def finish(self, status: str, **fields: Any) -> None:
        """Record the run's end."""
        self.record.update(status=status, finished_at=_now(), **fields)
        self.save()

    def check_resumable(self, start_at: str, configured: tuple[str, ...]) -> None:
        """Check that every stage before ``start_at`` left its output in this run.

        Raises:
            RunnerError: naming the missing output and how to produce it.
        """
        for stage in STAGES[: STAGES.index(start_at)]:
            if stage not in configured:
                continue
            if not self.has_output(stage):
                raise RunnerError(
                    f"cannot resume run {self.run_id} from {start_at!r}: the {stage} stage has no "
                    f"output there ({self.output_of(stage)})",
                    hint=f"resume from an earlier stage (--from {stage}) or run without --from",
                )


class _LogTee(io.TextIOBase):
    """A text stream that writes to another and appends to a log file (secrets masked).

    The file is opened per write: a runner prints a few dozen lines, and nothing is left
    open when a run is interrupted.
    """

    def __init__(self, stream: TextIO, path: Path) -> None:
        self.stream = stream
        self.path = path

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        from prodml.core.logs import redact

        self.stream.write(text)
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(redact(text))
        except OSError:  # a full disk must not fail the run that the log describes
            pass
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())
