"""Hook specifications: the contract between prodml and its plugins.

A plugin is a module (or object) with functions decorated by :data:`prodml.hookimpl`.
prodml finds plugins in two ways, as pytest does:

* its built-in plugins, listed in :data:`prodml.core.plugins.BUILTIN_PLUGINS`;
* third-party packages that declare an entry point in the ``prodml`` group::

      [project.entry-points.prodml]
      parquet = "prodml_parquet.plugin"

Two hooks: :func:`prodml_backends` (the backends a plugin provides) and
:func:`prodml_commands` (``prodml`` subcommands it adds). Only
:class:`prodml.core.plugins.Registry` calls them; a function named ``prodml_*`` that is not
one of them, or lacks ``@hookimpl``, is refused when the plugin is registered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from prodml.core.plugins import Backend, Command

PROJECT_NAME = "prodml"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def prodml_backends() -> list[Backend]:
    """Return the backends this plugin provides.

    Each :class:`~prodml.core.plugins.Backend` names a role (``source``, ``trainer``,
    ``store``, ``server`` or ``runner``), the ``type:`` word that selects it in a config,
    its pydantic config class and its implementation class. The module that defines the
    hook must import quickly: import heavy SDKs (tensorflow, feast, boto3, azure, kserve,
    kfp) inside the implementation's methods, and name them in ``Backend.requires`` so a
    missing one is reported with what to install (``Backend.extra``: an extra of the
    distribution that provides the backend).

    Example::

        @prodml.hookimpl
        def prodml_backends():
            return [Backend(role="source", type="parquet",
                            config=ParquetSourceConfig, implementation=ParquetSource)]
    """
    raise NotImplementedError  # a specification: plugins implement it


@hookspec
def prodml_commands() -> list[Command]:
    """Return the ``prodml`` subcommands this plugin adds.

    Called for ``prodml --help`` and to parse every command line that names a subcommand
    prodml itself does not define, so it must be cheap: return
    :class:`~prodml.core.plugins.Command` descriptors (name, help line, a function adding
    the command's options, and the handler as a ``"module:function"`` string imported only
    when the command runs). The module defining this hook should import nothing heavy —
    prodml's own kserve commands live in a module separate from the kserve backend so
    that listing them imports no pydantic.

    Example::

        @hookimpl
        def prodml_commands():
            return [Command("lint", "check a config's data against the model",
                            handler="my_plugin.cli:lint", arguments=add_lint_arguments)]
    """
    raise NotImplementedError  # a specification: plugins implement it
