"""examples/plugin, installed with pip like any third-party package, selected by `type:`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prodml.core.plugins import AUTOLOAD_ENV

REPO = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def plugin_site(pip_site) -> Path:
    return pip_site(REPO / "examples" / "plugin")


def env_with(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != AUTOLOAD_ENV}
    # keep a PYTHONPATH already set (a checkout tested without installing it) behind the site
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return env


def test_example_plugin_passes_the_conformance_suite(plugin_site: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "examples/plugin/tests")],
        capture_output=True,
        text=True,
        env=env_with(plugin_site),
        cwd=plugin_site,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout and "failed" not in done.stdout


def test_example_plugin_selected_by_config_feeds_the_pipeline(plugin_site: Path, tmp_path: Path) -> None:
    import pandas as pd

    csv = pd.read_csv(REPO / "examples/quickstart/data/train.csv")
    csv.insert(0, "row_id", range(len(csv)))
    csv.to_parquet(tmp_path / "train.parquet")
    (tmp_path / "prodml.yaml").write_text(
        "project: parquet-demo\n"
        "source: {type: parquet, path: train.parquet, label: target, drop: [row_id]}\n"
        f"runner: {{type: local, work_dir: {tmp_path / 'work'}}}\n"
        "stages: [fetch]\n"
    )
    listing = subprocess.run(
        [sys.executable, "-m", "prodml", "plugins"], capture_output=True, text=True, env=env_with(plugin_site)
    )
    assert any(line.split()[:2] == ["parquet", "prodml-parquet"] for line in listing.stdout.splitlines())
    run = subprocess.run(
        [sys.executable, "-m", "prodml", "run", "-c", str(tmp_path / "prodml.yaml")],
        capture_output=True,
        text=True,
        env=env_with(plugin_site),
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    (schema,) = (tmp_path / "work" / "runs").glob("*/dataset/schema.json")
    assert json.loads(schema.read_text())["feature_names"] == ["sqft", "rooms", "age", "distance", "quality"]


@pytest.mark.parametrize("package", ["examples/plugin", "tests/plugin_pkg"])
def test_plugins_import_prodml_only_through_prodml_plugin(package: str) -> None:
    """A plugin author needs one module: the example and the test plugin prove it."""
    import ast

    imported = []
    for path in sorted((REPO / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.append((path.name, node.module))
            elif isinstance(node, ast.Import):
                imported += [(path.name, alias.name) for alias in node.names]
    from_prodml = {module for _, module in imported if module == "prodml" or module.startswith("prodml.")}
    assert from_prodml, f"{package} imports nothing from prodml?"
    # the conformance suites are the other public module a plugin's tests use
    assert from_prodml <= {"prodml.plugin", "prodml.testing.sources", "prodml.testing.stores"}, imported


def test_every_public_name_of_prodml_plugin_resolves() -> None:
    import prodml.plugin as surface

    for name in surface.__all__:
        assert getattr(surface, name) is not None, name
    assert sorted(surface.__all__) == sorted(surface._SOURCES)
    assert "new_version_id" in dir(surface)
