"""The plugin registry: which backend types are installed, and building them from config.

:class:`Registry` is the only code that calls ``pm.hook``. Built-in plugins are registered
first, exactly like external ones; then, unless ``PRODML_DISABLE_PLUGIN_AUTOLOAD`` is set,
every entry point of the ``prodml`` group is loaded.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pluggy
from pydantic import BaseModel

from prodml.core import hookspecs
from prodml.core.errors import MissingDependencyError, PluginError, UnknownBackendError
from prodml.core.interfaces import ROLES, Role

AUTOLOAD_ENV = "PRODML_DISABLE_PLUGIN_AUTOLOAD"

#: Built-in plugin modules, registered under these names (also their entry-point names
#: in prodml's pyproject, so autoloading skips them instead of registering them twice).
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("csv", "prodml.plugins.sources.csv"),
    ("feast", "prodml.plugins.sources.feast"),
    ("keras", "prodml.plugins.trainers.keras"),
    ("local-store", "prodml.plugins.stores.local"),
    ("s3", "prodml.plugins.stores.s3"),
    ("azure-blob", "prodml.plugins.stores.azure_blob"),
    ("kserve", "prodml.plugins.servers.kserve"),
    ("local-runner", "prodml.runner.local"),
    ("kfp", "prodml.runner.kfp"),
)

BUILTIN_DISTRIBUTION = "prodml"


@dataclass(frozen=True)
class Backend:
    """One backend type a plugin provides, as returned by ``prodml_backends``.

    Attributes:
        role: ``source``, ``trainer``, ``store``, ``server`` or ``runner``.
        type: the word that selects it in a config (``type: s3``).
        config: pydantic model of its config section; must declare
            ``type: Literal["<type>"]`` and forbid extra keys.
        implementation: class built as ``implementation(config)``; subclass of the role's ABC.
        requires: importable module names it needs beyond prodml's core dependencies.
        extra: the prodml extra that installs ``requires`` (for the error message).
        description: one line shown by ``prodml plugins``.
        aliases: other words users may type for it (``minio`` for ``s3``); used only
            to suggest the right type when a config names an unknown one.
    """

    role: Role
    type: str
    config: builtins.type[BaseModel]
    implementation: builtins.type
    requires: tuple[str, ...] = ()
    extra: str | None = None
    description: str = ""
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class InstalledBackend:
    """A :class:`Backend` and the distribution (package) that provides it."""

    backend: Backend
    plugin_name: str
    distribution: str

    def missing_dependency(self) -> MissingDependencyError | None:
        """The error to raise when one of ``requires`` is not installed, else None."""
        module = self.missing_requirement()
        if module is None:
            return None
        return MissingDependencyError(self.backend.role, self.backend.type, module, self.backend.extra)

    def missing_requirement(self) -> str | None:
        """The first of ``requires`` that cannot be imported, or None."""
        for module in self.backend.requires:
            if not module_available(module):
                return module
        return None


def module_available(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it or its parent packages.

    ``importlib.util.find_spec("azure.storage.blob")`` would import ``azure`` and
    ``azure.storage``; listing plugins must not import any SDK, so submodules are looked up
    on their parent's search path instead.
    """
    if name in sys.modules:
        return True
    top, *rest = name.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    for part in rest:
        if spec is None or spec.submodule_search_locations is None:
            return False
        spec = importlib.machinery.PathFinder.find_spec(part, list(spec.submodule_search_locations))
    return spec is not None


@dataclass(eq=False)
class Registry:
    """The installed backends, per role.

    Args:
        autoload: load ``prodml`` entry points; default: on unless the environment
            variable ``PRODML_DISABLE_PLUGIN_AUTOLOAD`` is set to a non-empty value.
        builtins: register the built-in plugins (tests may switch this off).
        plugins: extra plugin objects (modules or instances) to register, by name.
    """

    autoload: bool | None = None
    builtins: bool = True
    plugins: dict[str, Any] = field(default_factory=dict)
    _pm: pluggy.PluginManager = field(init=False, repr=False)
    _backends: dict[Role, dict[str, InstalledBackend]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.autoload is None:
            self.autoload = not os.environ.get(AUTOLOAD_ENV)
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        if self.builtins:
            for name, module in BUILTIN_PLUGINS:
                self._pm.register(importlib.import_module(module), name=name)
        for name, plugin in self.plugins.items():
            self._pm.register(plugin, name=name)
        if self.autoload:
            try:
                self._pm.load_setuptools_entrypoints(hookspecs.PROJECT_NAME)
            except Exception as exc:  # a broken third-party plugin must say which one
                raise PluginError(f"could not load a 'prodml' entry-point plugin: {exc}") from exc
        self._backends = self._collect()

    def _distributions(self) -> dict[int, str]:
        dists = {}
        for plugin, dist in self._pm.list_plugin_distinfo():
            dists[id(plugin)] = dist.metadata["name"] or dist.project_name
        return dists

    def _collect(self) -> dict[Role, dict[str, InstalledBackend]]:
        dists = self._distributions()
        builtin_names = {name for name, _ in BUILTIN_PLUGINS}
        found: dict[Role, dict[str, InstalledBackend]] = {role: {} for role in ROLES}
        for impl in self._pm.hook.prodml_backends.get_hookimpls():
            if impl.plugin_name in builtin_names and self.builtins:
                dist = BUILTIN_DISTRIBUTION
            else:
                dist = dists.get(id(impl.plugin), f"plugin {impl.plugin_name!r}")
            provided: list[Backend] = impl.function() or []  # type: ignore[assignment]
            for backend in provided:
                self._check(backend, impl.plugin_name)
                entry = InstalledBackend(backend, impl.plugin_name, dist)
                previous = found[backend.role].get(backend.type)
                if previous is not None:
                    raise PluginError(
                        f"{backend.role} type {backend.type!r} is provided twice: by "
                        f"{previous.distribution} ({previous.plugin_name}) and by "
                        f"{dist} ({impl.plugin_name}); uninstall one of them"
                    )
                found[backend.role][backend.type] = entry
        return found

    @staticmethod
    def _check(backend: Backend, plugin_name: str) -> None:
        if backend.role not in ROLES:
            raise PluginError(
                f"plugin {plugin_name!r} declares unknown role {backend.role!r}; "
                f"roles are: {', '.join(ROLES)}"
            )
        field_info = backend.config.model_fields.get("type")
        if field_info is None or backend.config.model_config.get("extra") != "forbid":
            raise PluginError(
                f"plugin {plugin_name!r}: config class {backend.config.__name__} of "
                f"{backend.role} type {backend.type!r} must declare "
                f"`type: Literal[{backend.type!r}]` and model_config extra='forbid'"
            )

    def types(self, role: Role) -> dict[str, InstalledBackend]:
        """Installed backends of ``role`` by type name."""
        return dict(self._backends[role])

    def __iter__(self) -> Iterator[InstalledBackend]:
        for role in ROLES:
            yield from self._backends[role].values()

    def get(self, role: Role, type_name: str, *, file: str | None = None) -> InstalledBackend:
        """The backend for ``type_name``; :class:`UnknownBackendError` names the choices."""
        try:
            return self._backends[role][type_name]
        except KeyError:
            raise UnknownBackendError(
                role, type_name, self._backends[role], file=file, aliases=self.aliases(role)
            ) from None

    def create(self, role: Role, config: BaseModel) -> Any:
        """Build the implementation of ``config`` (its ``type`` picks the backend).

        Raises:
            MissingDependencyError: the backend's optional SDK is not installed.
        """
        installed = self.get(role, config.type)  # type: ignore[attr-defined]
        missing = installed.missing_dependency()
        if missing is not None:
            raise missing
        return installed.backend.implementation(config)

    def aliases(self, role: Role) -> dict[str, str]:
        """{alias: type} of ``role``'s installed backends."""
        return {a: name for name, b in self._backends[role].items() for a in b.backend.aliases}

    def config_classes(self, role: Role) -> Iterable[tuple[str, type[BaseModel]]]:
        """(type, config class) pairs of ``role``, sorted by type."""
        return sorted((name, b.backend.config) for name, b in self._backends[role].items())


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry (built on first use from builtins and entry points)."""
    global _default
    if _default is None:
        _default = Registry()
    return _default


def reset_default_registry() -> None:
    """Forget the process-wide registry (tests; after installing a plugin)."""
    global _default
    _default = None
