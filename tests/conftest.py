"""Test-wide setup: no stray plugins, and a fresh registry per test."""

from __future__ import annotations

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
