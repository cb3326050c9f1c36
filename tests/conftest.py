"""Test-wide setup: no stray plugins, and a fresh registry per test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from prodml.core import plugins
from prodml.testing.sdk import in_ci, is_missing_sdk_skip

# real SeaweedFS (S3) and Azurite (Azure Blob) servers, one per session, on loopback ports
from prodml.testing.services import azurite_server, s3_server  # noqa: F401

FEAST_EXAMPLE = Path(__file__).parent.parent / "examples" / "feast_repo"


def _fail_missing_sdk_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    """Under CI=true, a skip because an SDK could not be imported becomes a failure.

    One rule for every module, whether it uses prodml.testing.sdk.needs_sdk or
    pytest.importorskip: CI installs every extra, so a missing SDK there is a broken install.
    """
    if not (report.skipped and in_ci() and isinstance(report.longrepr, tuple)):
        return
    reason = str(report.longrepr[2])
    if is_missing_sdk_skip(reason):
        report.outcome = "failed"
        report.longrepr = f"CI=true and a test needs an SDK that cannot be imported: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    _fail_missing_sdk_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    _fail_missing_sdk_skip(outcome.get_result())


@pytest.fixture(autouse=True)
def _isolated_plugins(monkeypatch: pytest.MonkeyPatch):
    """Tests see only the built-in plugins unless a test registers or installs more."""
    monkeypatch.setenv(plugins.AUTOLOAD_ENV, "1")
    plugins.reset_default_registry()
    yield
    plugins.reset_default_registry()


@pytest.fixture(scope="session", autouse=True)
def state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This session's PRODML_STATE_HOME: local model-server state never goes to ~/.cache/prodml.

    Session-wide (not monkeypatched per test) so that module-scoped server fixtures, set
    up before any function-scoped fixture, see it too.
    """
    path = tmp_path_factory.mktemp("prodml-state")
    previous = os.environ.get("PRODML_STATE_HOME")
    os.environ["PRODML_STATE_HOME"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("PRODML_STATE_HOME", None)
    else:
        os.environ["PRODML_STATE_HOME"] = previous


@pytest.fixture(scope="module")
def pip_site(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Path]:
    """Install a package folder for real (pip, with its .dist-info) into a new site folder.

    Returns the folder; put it on PYTHONPATH and prodml finds the package's entry points.
    """

    def install(package: Path) -> Path:
        site = tmp_path_factory.mktemp("site")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--target",
                str(site),
                str(package),
            ],
            check=True,
        )
        return site

    return install


def _tracked_copy(src: Path, dest: Path) -> Path:
    """Copy the files git tracks under ``src`` (what a fresh clone has), else all but Feast state."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "."], cwd=src, capture_output=True, text=True, check=False
    )
    names = [n for n in listed.stdout.split("\0") if n] if listed.returncode == 0 else []
    if not names:
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".feast", ".feast-duckdb", "__pycache__"))
        return dest
    for name in names:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / name, dest / name)
    return dest


@pytest.fixture(scope="session")
def copy_feast_example() -> Callable[[Path], Path]:
    """Copy examples/feast_repo as a fresh clone has it into a folder; returns the folder.

    Each test gets its own Feast state (registry, online store) this way.
    """
    return lambda dest: _tracked_copy(FEAST_EXAMPLE, dest)
