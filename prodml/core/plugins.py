"""The plugin registry: which backend types and commands are installed, and building backends.

:class:`Registry` is the only code that calls ``pm.hook``. Built-in plugins are registered
exactly like external ones; unless ``PRODML_DISABLE_PLUGIN_AUTOLOAD`` is set, every entry
point of the ``prodml`` group is loaded too.

Loading happens in two steps, so that ``prodml --help`` stays fast: the plugins that add CLI
commands (built-in ones listed in :data:`BUILTIN_COMMAND_PLUGINS`, and every entry point) are
registered when the registry is made; the built-in backend modules, which define pydantic
config classes, only when a backend is first asked for.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.machinery
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import pluggy

from prodml.core import hookspecs
from prodml.core.errors import MissingDependencyError, PluginError, UnknownBackendError, closest

if TYPE_CHECKING:
    import argparse

    from pydantic import BaseModel

    from prodml.core.interfaces import Role

log = logging.getLogger("prodml.plugins")

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
    ("kserve-commands", "prodml.plugins.servers.commands"),
    ("local-runner", "prodml.runner.local"),
    ("kfp", "prodml.runner.kfp"),
)

#: Built-in plugins that only add CLI commands. They import no pydantic and no backend, so
#: they are registered at once; the other built-ins when a backend is first needed.
BUILTIN_COMMAND_PLUGINS: frozenset[str] = frozenset({"kserve-commands"})

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
        extra: the extra of the distribution providing the backend that installs
            ``requires`` (``s3`` for prodml's own s3 store: ``pip install 'prodml[s3]'``).
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
class Command:
    """One ``prodml`` subcommand a plugin adds, as returned by ``prodml_commands``.

    A light descriptor: building the ``prodml --help`` text must import nothing heavy, so
    the handler is named by a string and imported only when the command runs.

    Attributes:
        name: the subcommand (``prodml <name>``); must not clash with another command.
        help: one line shown by ``prodml --help``.
        handler: ``"package.module:function"``; the function takes the parsed
            :class:`argparse.Namespace` and returns the exit status (0 done, 1 failed,
            2 bad usage) or raises a :class:`~prodml.core.errors.ProdmlError`.
        arguments: adds the command's own options to its ``argparse`` parser; called only
            when the command (or its ``--help``) is parsed.
        config: give the command the standard required ``-c/--config FILE`` option.
    """

    name: str
    help: str
    handler: str
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    config: bool = True


@dataclass(frozen=True)
class InstalledBackend:
    """A :class:`Backend` and the distribution (package) that provides it.

    ``package`` is the installed distribution's name, None for a plugin object registered
    directly (tests); ``distribution`` is what listings show in either case.
    """

    backend: Backend
    plugin_name: str
    distribution: str
    package: str | None = None

    def missing_dependency(self) -> MissingDependencyError | None:
        """The error to raise when one of ``requires`` is not installed, else None."""
        module = self.missing_requirement()
        if module is None:
            return None
        return MissingDependencyError(
            self.backend.role, self.backend.type, module, self.backend.extra, package=self.package
        )

    def missing_requirement(self) -> str | None:
        """The first of ``requires`` that cannot be imported, or None."""
        for module in self.backend.requires:
            if not module_available(module):
                return module
        return None


@dataclass(frozen=True)
class InstalledCommand:
    """A :class:`Command` and the distribution (package) that provides it."""

    command: Command
    plugin_name: str
    distribution: str

    def load(self) -> Callable[[argparse.Namespace], int]:
        """Import the command's handler (only now: it may import heavy modules)."""
        module, _, func = self.command.handler.partition(":")
        try:
            return getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError) as exc:
            raise PluginError(
                f"command {self.command.name!r} of plugin {self.plugin_name!r} "
                f"({self.distribution}): cannot load its handler {self.command.handler!r}: {exc}"
            ) from exc


@dataclass(frozen=True)
class LoadFailure:
    """An entry point of the ``prodml`` group that could not be imported."""

    distribution: str
    entry_point: str
    value: str
    error: str

    def __str__(self) -> str:
        return (
            f"entry point {self.entry_point!r} = {self.value!r} of distribution "
            f"{self.distribution} failed to import: {self.error}"
        )


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


def _entry_point_files() -> list[tuple[str, str]] | None:
    """(metadata folder, entry_points.txt text) of each distribution on ``sys.path``, in path
    order; None when a zip file is on ``sys.path`` (only ``importlib.metadata`` reads those)."""
    files: list[tuple[str, str]] = []
    for entry in sys.path:
        try:
            listing = sorted(os.scandir(entry or "."), key=lambda e: e.name)
        except NotADirectoryError:
            return None
        except OSError:
            continue
        for item in listing:
            if not item.name.endswith((".dist-info", ".egg-info")):
                continue
            try:
                with open(os.path.join(item.path, "entry_points.txt"), encoding="utf-8") as fh:
                    files.append((item.path, fh.read()))
            except OSError:
                continue
    return files


def skip_pydantic_plugin_scan() -> None:
    """Tell pydantic it has no plugins to look for, when no installed distribution has any.

    pydantic looks up its ``pydantic`` entry-point group through ``importlib.metadata`` when
    the first model is built: a read of every installed distribution's metadata, a good part
    of `prodml validate`'s start-up in an environment with TensorFlow, Feast and KServe. When
    the entry_points.txt files (the scan prodml's own group uses, about 1 ms; it runs again
    when the registry loads, since a cache could miss a plugin installed meanwhile) declare no
    such entry point, ``PYDANTIC_DISABLE_PLUGINS=__all__`` changes nothing but that lookup. A
    value the user set is left alone, and so is anything unusual (a zip file on ``sys.path``).
    """
    if "PYDANTIC_DISABLE_PLUGINS" in os.environ:
        return
    files = _entry_point_files()
    if files is None or any("[pydantic]" in text for _, text in files):
        return
    os.environ["PYDANTIC_DISABLE_PLUGINS"] = "__all__"


def prodml_entry_points() -> list[tuple[str, str, str]]:
    """(distribution, name, value) of every entry point in the ``prodml`` group, in path order.

    ``importlib.metadata`` answers this too, but importing it (email, zipfile, csv, ...)
    costs more than the rest of ``prodml --help``; the metadata folders of the directories
    on ``sys.path`` are read directly instead. A zip file on ``sys.path`` (rare) sends the
    whole lookup through ``importlib.metadata``.
    """
    files = _entry_point_files()
    if files is None:
        return _entry_points_from_metadata()
    found: list[tuple[str, str, str]] = []
    for path, text in files:
        if f"[{hookspecs.PROJECT_NAME}]" not in text:
            continue
        dist = _distribution_name(path) or os.path.basename(path).split("-")[0]
        found += [(dist, name, value) for name, value in _ini_section(text, hookspecs.PROJECT_NAME)]
    return found


def _entry_points_from_metadata() -> list[tuple[str, str, str]]:
    from importlib.metadata import distributions

    return [
        (dist.metadata["name"] or dist.name, ep.name, ep.value)
        for dist in distributions()
        for ep in dist.entry_points
        if ep.group == hookspecs.PROJECT_NAME
    ]


def _ini_section(text: str, section: str) -> list[tuple[str, str]]:
    """``name = value`` pairs of one ``[section]`` of an entry_points.txt."""
    pairs, inside = [], False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            inside = line[1:-1].strip() == section
        elif inside and "=" in line:
            name, _, value = line.partition("=")
            pairs.append((name.strip(), value.split("[")[0].strip()))  # drop a legacy [extras]
    return pairs


def _distribution_name(metadata_dir: str) -> str | None:
    """The ``Name:`` of a .dist-info (METADATA) or .egg-info (PKG-INFO) folder."""
    for file in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(metadata_dir, file), encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith("Name:"):
                        return line.partition(":")[2].strip()
                    if not line.strip():
                        break  # the headers end at the first blank line
        except OSError:
            continue
    return None


def _load_object(value: str) -> Any:
    """What an entry point's ``module:attr.path`` (or plain ``module``) names."""
    module, _, attrs = value.partition(":")
    obj: Any = importlib.import_module(module.strip())
    for attr in filter(None, attrs.strip().split(".")):
        obj = getattr(obj, attr)
    return obj


class _Manager(pluggy.PluginManager):
    """pluggy's manager, also noting ``prodml_*`` functions that lack ``@hookimpl``.

    pluggy ignores an undecorated function, so a forgotten decorator would make a plugin
    provide nothing, silently.
    """

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.undecorated: list[str] = []

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        prefixed = name.startswith(f"{hookspecs.PROJECT_NAME}_")
        if opts is None and prefixed and inspect.isroutine(getattr(plugin, name, None)):
            self.undecorated.append(name)
        return opts


@dataclass(eq=False)
class Registry:
    """The installed backends per role, and the CLI commands plugins add.

    Args:
        autoload: load ``prodml`` entry points; default: on unless the environment
            variable ``PRODML_DISABLE_PLUGIN_AUTOLOAD`` is set to a non-empty value.
        builtins: register the built-in plugins (tests may switch this off).
        plugins: extra plugin objects (modules or instances) to register, by name.

    Raises:
        PluginError: a plugin implements a hook prodml does not define (a misspelled
            ``prodml_backend``), defines a ``prodml_*`` function without ``@hookimpl``,
            or claims a role/type or command another plugin provides. An entry point that
            fails to import is not fatal: it is recorded in :attr:`load_failures`, logged,
            and named when a config asks for a type nobody provides.
    """

    autoload: bool | None = None
    builtins: bool = True
    plugins: dict[str, Any] = field(default_factory=dict)
    load_failures: list[LoadFailure] = field(init=False, default_factory=list)
    _pm: _Manager = field(init=False, repr=False)
    _dists: dict[str, str] = field(init=False, repr=False, default_factory=dict)
    _searched: set[str] = field(init=False, repr=False, default_factory=set)
    _loaded: dict[Role, dict[str, InstalledBackend]] | None = field(init=False, repr=False, default=None)
    _commands: dict[str, InstalledCommand] | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if self.autoload is None:
            self.autoload = not os.environ.get(AUTOLOAD_ENV)
        self._pm = _Manager()
        self._pm.add_hookspecs(hookspecs)
        if self.builtins:
            self._searched.add(BUILTIN_DISTRIBUTION)
            for name, module in BUILTIN_PLUGINS:
                if name in BUILTIN_COMMAND_PLUGINS:
                    self._register(importlib.import_module(module), name, BUILTIN_DISTRIBUTION)
        for name, plugin in self.plugins.items():
            self._register(plugin, name, None)
        if self.autoload:
            self._load_entry_points()

    # -- loading ------------------------------------------------------------------------

    def _register(self, plugin: Any, name: str, distribution: str | None) -> None:
        where = f"plugin {name!r}" + (f" ({distribution})" if distribution else "")
        self._pm.undecorated.clear()
        try:
            self._pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"{where}: {exc}", hint=_DISABLE_HINT) from None
        if distribution is not None:
            self._dists[name] = distribution
        if self._pm.undecorated:
            self._pm.unregister(name=name)
            names = ", ".join(sorted(set(self._pm.undecorated)))
            raise PluginError(
                f"{where} defines {names} without @hookimpl, so prodml would ignore it",
                hint="decorate it: `from prodml.plugin import hookimpl` and `@hookimpl`",
            )
        self._check_pending(name)

    def _check_pending(self, plugin_name: str) -> None:
        """pluggy's ``check_pending``, with a message naming the plugin and the likely hook."""
        specs = [n for n, caller in vars(self._pm.hook).items() if caller.has_spec()]
        for hook_name, caller in vars(self._pm.hook).items():
            if caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if impl.plugin_name != plugin_name or impl.opts.get("optionalhook"):
                    continue
                dist = self._dists.get(plugin_name)
                where = f"plugin {plugin_name!r}" + (f" ({dist})" if dist else "")
                guess = closest(hook_name, specs)
                raise PluginError(
                    f"{where} implements unknown hook {hook_name!r}"
                    + (f" — did you mean {guess!r}?" if guess else "")
                    + f"; prodml's hooks are: {', '.join(sorted(specs))}",
                    hint=_DISABLE_HINT,
                )

    def _load_entry_points(self) -> None:
        """Register every ``prodml`` entry point; one that fails to import is recorded."""
        builtin_names = {name for name, _ in BUILTIN_PLUGINS} if self.builtins else set()
        for dist_name, name, value in prodml_entry_points():
            self._searched.add(dist_name)
            if name in builtin_names or self._pm.has_plugin(name) or self._pm.is_blocked(name):
                continue
            try:
                plugin = _load_object(value)
            except Exception as exc:  # any error in a third-party module; keep the others
                failure = LoadFailure(dist_name, name, value, f"{type(exc).__name__}: {exc}")
                self.load_failures.append(failure)
                log.warning("%s; its backends and commands are unavailable", failure)
                continue
            self._register(plugin, name, dist_name)

    def _ensure_backends(self) -> dict[Role, dict[str, InstalledBackend]]:
        if self._loaded is None:
            if self.builtins:
                for name, module in BUILTIN_PLUGINS:
                    if not self._pm.has_plugin(name):
                        self._register(importlib.import_module(module), name, BUILTIN_DISTRIBUTION)
            self._loaded = self._collect()
        return self._loaded

    def _distribution(self, plugin_name: str) -> tuple[str, str | None]:
        """(shown name, installed distribution or None) of a registered plugin."""
        package = self._dists.get(plugin_name)
        return (package or f"plugin {plugin_name!r}"), package

    def _collect(self) -> dict[Role, dict[str, InstalledBackend]]:
        from prodml.core.interfaces import ROLES

        found: dict[Role, dict[str, InstalledBackend]] = {role: {} for role in ROLES}
        for impl in self._pm.hook.prodml_backends.get_hookimpls():
            dist, package = self._distribution(impl.plugin_name)
            provided: list[Backend] = impl.function() or []  # type: ignore[assignment]
            for backend in provided:
                self._check(backend, impl.plugin_name)
                entry = InstalledBackend(backend, impl.plugin_name, dist, package)
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
        from prodml.core.interfaces import ROLES

        if not isinstance(backend, Backend):
            raise PluginError(
                f"plugin {plugin_name!r}: prodml_backends() must return Backend values, "
                f"not {type(backend).__name__}"
            )
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

    # -- commands -------------------------------------------------------------------------

    def commands(self) -> dict[str, InstalledCommand]:
        """The CLI subcommands plugins add, by name (imports no backend module)."""
        if self._commands is None:
            found: dict[str, InstalledCommand] = {}
            for impl in self._pm.hook.prodml_commands.get_hookimpls():
                dist, _ = self._distribution(impl.plugin_name)
                for command in cast(Iterable[Any], impl.function() or []):
                    _check_command(command, impl.plugin_name, dist)
                    previous = found.get(command.name)
                    if previous is not None:
                        raise PluginError(
                            f"command {command.name!r} is provided twice: by {previous.distribution} "
                            f"({previous.plugin_name}) and by {dist} ({impl.plugin_name}); "
                            "uninstall one of them"
                        )
                    found[command.name] = InstalledCommand(command, impl.plugin_name, dist)
            self._commands = found
        return dict(self._commands)

    # -- backends -------------------------------------------------------------------------

    def searched(self) -> list[str]:
        """The distributions whose ``prodml`` plugins were looked at, sorted."""
        return sorted(self._searched)

    def types(self, role: Role) -> dict[str, InstalledBackend]:
        """Installed backends of ``role`` by type name."""
        return dict(self._ensure_backends()[role])

    def __iter__(self) -> Iterator[InstalledBackend]:
        for by_type in self._ensure_backends().values():
            yield from by_type.values()

    def get(self, role: Role, type_name: str, *, file: str | None = None) -> InstalledBackend:
        """The backend for ``type_name``; :class:`UnknownBackendError` names the choices."""
        backends = self._ensure_backends()
        try:
            return backends[role][type_name]
        except KeyError:
            raise UnknownBackendError(
                role,
                type_name,
                backends[role],
                file=file,
                aliases=self.aliases(role),
                hint=self._where_hint(),
            ) from None

    def _where_hint(self) -> str:
        """Where the registry looked for backends, and what failed to load."""
        searched = ", ".join(self.searched()) or "none"
        text = f"searched the 'prodml' plugins of: {searched}"
        if not self.autoload:
            text += f" (entry-point plugins are off: {AUTOLOAD_ENV} is set)"
        else:
            text += "; a backend from another package is found once that package is pip-installed"
        for failure in self.load_failures:
            text += f"; {failure}"
        return text

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
        backends = self._ensure_backends()
        return {a: name for name, b in backends[role].items() for a in b.backend.aliases}

    def config_classes(self, role: Role) -> Iterable[tuple[str, type[BaseModel]]]:
        """(type, config class) pairs of ``role``, sorted by type."""
        return sorted((name, b.backend.config) for name, b in self._ensure_backends()[role].items())


_DISABLE_HINT = f"fix or uninstall that plugin; {AUTOLOAD_ENV}=1 runs prodml with its built-in plugins only"


def _check_command(command: Any, plugin_name: str, dist: str) -> None:
    where = f"plugin {plugin_name!r} ({dist})"
    if not isinstance(command, Command):
        raise PluginError(
            f"{where}: prodml_commands() must return Command values, not {type(command).__name__}"
        )
    module, sep, func = command.handler.partition(":")
    if not (sep and module and func.isidentifier()):
        raise PluginError(
            f"{where}: command {command.name!r} has handler {command.handler!r}; "
            "it must be 'package.module:function'"
        )
    if not command.name or command.name.startswith("-") or " " in command.name:
        raise PluginError(f"{where}: {command.name!r} is not a command name")


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
