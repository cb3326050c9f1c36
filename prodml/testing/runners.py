"""Conformance suite of the ``runner`` role.

A runner executes the configured stages; whichever it is, the fetch stage must leave the
same dataset, a summary must name what ran, and a resume point it cannot honour must be
refused with a clear error. Use it as::

    class TestMyRunner(RunnerConformance):
        @pytest.fixture
        def backend_config(self, tmp_path):
            return {"type": "mine", "work_dir": str(tmp_path / "work")}

Set ``runs_here = False`` for a runner that needs a remote system (a cluster): the tests
that execute stages are then skipped, the others still run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from prodml.core.config import ProdmlConfig, load_config_dict
from prodml.core.errors import ProdmlError
from prodml.core.interfaces import RunSummary
from prodml.core.plugins import Registry
from prodml.testing.base import BackendConformance

CSV = "a,b,y\n1.0,2.0,3.0\n2.0,1.0,4.0\n3.0,0.5,5.5\n4.0,0.0,7.0\n"


class RunnerConformance(BackendConformance):
    """What every runner does with a one-stage (fetch) config."""

    role: ClassVar = "runner"
    #: False for runners that need a remote system (their stage-running tests are skipped)
    runs_here: ClassVar[bool] = True

    @pytest.fixture
    def data_csv(self, tmp_path: Path) -> Path:
        """A tiny CSV for the csv source."""
        path = tmp_path / "data.csv"
        path.write_text(CSV, encoding="utf-8")
        return path

    @pytest.fixture
    def fetch_config(
        self, registry: Registry, backend_config: dict[str, Any], data_csv: Path, tmp_path: Path
    ) -> ProdmlConfig:
        """A whole config that only fetches, run by the runner under test."""
        data = {
            "project": "conformance",
            "source": {"type": "csv", "path": str(data_csv), "label": "y"},
            "runner": backend_config,
            "stages": ["fetch"],
        }
        return load_config_dict(data, base_dir=tmp_path, registry=registry)

    def test_runs_the_fetch_stage(self, backend: Any, fetch_config: ProdmlConfig) -> None:
        if not self.runs_here:
            pytest.skip(f"{type(backend).__name__} runs on a remote system only")
        import pandas as pd

        summary = backend.run(fetch_config)
        assert isinstance(summary, RunSummary)
        assert tuple(summary.stages) == ("fetch",)
        assert summary.run_id
        out = Path(summary.outputs["fetch"])
        frame = pd.read_parquet(out / "dataset.parquet")
        assert list(frame.columns) == ["a", "b", "y"]
        assert frame["y"].tolist() == [3.0, 4.0, 5.5, 7.0]
        assert (out / "schema.json").is_file()

    def test_refuses_to_resume_at_an_unconfigured_stage(
        self, backend: Any, fetch_config: ProdmlConfig
    ) -> None:
        with pytest.raises(ProdmlError) as info:
            backend.run(fetch_config, start_at="serve")
        assert "serve" in str(info.value) or "--from" in str(info.value)

    def test_compile_writes_a_pipeline_or_says_it_cannot(
        self, backend: Any, fetch_config: ProdmlConfig, tmp_path: Path
    ) -> None:
        output = tmp_path / "pipeline.yaml"
        try:
            written = backend.compile(fetch_config, output)
        except NotImplementedError as exc:
            assert type(backend).__name__ in str(exc)
            return
        assert Path(written).is_file() and Path(written).stat().st_size > 0
