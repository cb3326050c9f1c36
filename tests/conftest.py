"""Test-wide setup: no stray plugins, and a fresh registry per test."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from prodml.core import plugins

# real SeaweedFS (S3) and Azurite (Azure Blob) servers, one per session, on loopback ports
from prodml.testing.services import azurite_server, s3_server  # noqa: F401


@pytest.fixture(autouse=True)
def _isolated_plugins(monkeypatch: pytest.MonkeyPatch):
    """Tests see only the built-in plugins unless a test registers or installs more."""
    monkeypatch.setenv(plugins.AUTOLOAD_ENV, "1")
    plugins.reset_default_registry()
    yield
    plugins.reset_default_registry()


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
