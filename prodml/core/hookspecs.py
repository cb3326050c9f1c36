"""Hook specifications: the contract between prodml and its plugins.

A plugin is a module (or object) with functions decorated by :data:`prodml.hookimpl`.
prodml finds plugins in two ways, as pytest does:

* its built-in plugins, listed in :data:`prodml.core.plugins.BUILTIN_PLUGINS`;
* third-party packages that declare an entry point in the ``prodml`` group::

      [project.entry-points.prodml]
      parquet = "prodml_parquet.plugin"

Only :class:`prodml.core.plugins.Registry` calls these hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from prodml.core.plugins import Backend

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
    missing one is reported with the extra to install.

    Example::

        @prodml.hookimpl
        def prodml_backends():
            return [Backend(role="source", type="parquet",
                            config=ParquetSourceConfig, implementation=ParquetSource)]
    """
    raise NotImplementedError  # a specification: plugins implement it
