"""What every backend's conformance suite checks, whatever its role."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ValidationError

from prodml.core import interfaces
from prodml.core.config import PluginConfig
from prodml.core.interfaces import Role
from prodml.core.plugins import Registry

ROLE_ABC: dict[str, type] = {
    "source": interfaces.DataSource,
    "trainer": interfaces.Trainer,
    "store": interfaces.ModelStore,
    "server": interfaces.ModelServer,
    "runner": interfaces.Runner,
}


class BackendConformance:
    """Base of the per-role suites.

    Override :meth:`backend_config` (the plugin's config section as a dict, as it would
    appear in YAML). Override :meth:`registry` when the plugin is not installed as an
    entry point (e.g. ``Registry(plugins={"mine": my_module})``).
    """

    role: ClassVar[Role]

    @pytest.fixture
    def registry(self) -> Registry:
        """Registry with the built-ins and, as a plugin's tests need it, its entry points."""
        return Registry(autoload=True)

    @pytest.fixture
    def base_dir(self, tmp_path: Path) -> Path:
        """Folder relative paths in ``backend_config`` resolve against."""
        return tmp_path

    @pytest.fixture
    def backend_config(self) -> dict[str, Any]:
        """The config section under test, as plain data. Subclasses must override."""
        pytest.fail(f"{type(self).__name__} must override the `backend_config` fixture")

    @pytest.fixture
    def config(self, registry: Registry, backend_config: dict[str, Any], base_dir: Path) -> BaseModel:
        """``backend_config`` validated by the plugin's own config class."""
        installed = registry.get(self.role, backend_config["type"])
        return installed.backend.config.model_validate(backend_config, context={"base_dir": base_dir})

    @pytest.fixture
    def backend(self, registry: Registry, config: BaseModel) -> Any:
        """The implementation built from ``config`` by the registry."""
        return registry.create(self.role, config)

    # -- checks every plugin passes ---------------------------------------------------

    def test_registered_with_a_strict_config(self, registry: Registry, backend_config: dict) -> None:
        installed = registry.get(self.role, backend_config["type"])
        cls = installed.backend.config
        assert issubclass(cls, BaseModel)
        assert cls.model_config.get("extra") == "forbid"
        with pytest.raises(ValidationError):
            cls.model_validate({**backend_config, "surely_not_a_key": 1})

    def test_config_class_documents_itself(self, registry: Registry, backend_config: dict) -> None:
        cls = registry.get(self.role, backend_config["type"]).backend.config
        # its own docstring: inspect.getdoc would fall back to a base class's (PluginConfig's)
        own = (cls.__dict__.get("__doc__") or "").strip()
        assert own, f"{cls.__name__} needs its own docstring (shown in the config reference)"
        if issubclass(cls, PluginConfig):
            assert cls.model_config.get("frozen")

    def test_implements_the_role(self, backend: Any) -> None:
        assert isinstance(backend, ROLE_ABC[self.role])
        abstract = getattr(type(backend), "__abstractmethods__", frozenset())
        assert not abstract, f"{type(backend).__name__} leaves {sorted(abstract)} unimplemented"
