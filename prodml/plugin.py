"""Everything a prodml plugin needs, from one module.

A plugin author imports only from here (docs/writing-a-plugin.md explains each name)::

    from prodml.plugin import Backend, DataSource, PluginConfig, ConfigPath, DataError, hookimpl

What is here:

* plugging in: :data:`hookimpl`, :class:`Backend` (for ``prodml_backends``),
  :class:`Command` (for ``prodml_commands``);
* config: :class:`PluginConfig` (frozen, unknown keys forbidden) and :data:`ConfigPath`
  (a path resolved against the config file's folder); credentials are
  ``pydantic.SecretStr``;
* the roles, one abstract class each: :class:`DataSource`, :class:`Trainer`,
  :class:`ModelStore`, :class:`ModelServer`, :class:`Runner`, and the values they exchange
  (:class:`DatasetSchema`, :class:`TrainSpec`, :class:`TrainResult`, :class:`ModelRef`,
  :class:`ModelVersion`, :class:`Endpoint`, :class:`ServerStatus`, :class:`RunSummary`,
  for a store's cluster capabilities :class:`SecretEnv` and :class:`KServeStorage`, and for
  moving ``latest`` :class:`LatestMove` and :data:`MOVE_REASONS`);
* the errors a user can cause, all :class:`ProdmlError` (the CLI prints them without a
  traceback);
* the bundle helpers a store or trainer needs: :func:`verify_bundle`,
  :func:`parse_manifest`, :func:`read_manifest`, :func:`write_manifest`,
  :func:`manifest_digest`, :func:`new_version_id`, :func:`bundle_files`,
  :func:`safe_relpath`, :class:`BundleMetadata`.

Names are imported on first use, so a module that only needs :data:`hookimpl` and
:class:`Command` (one adding CLI commands, imported by ``prodml --help``) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the module that defines it
_SOURCES: dict[str, str] = {
    # plugging in
    "hookimpl": "prodml.core.hookspecs",
    "Backend": "prodml.core.plugins",
    "Command": "prodml.core.plugins",
    # config
    "PluginConfig": "prodml.core.config",
    "ConfigPath": "prodml.core.config",
    "ProdmlConfig": "prodml.core.config",
    # roles and values
    "Role": "prodml.core.interfaces",
    "ROLES": "prodml.core.interfaces",
    "DataSource": "prodml.core.interfaces",
    "Trainer": "prodml.core.interfaces",
    "ModelStore": "prodml.core.interfaces",
    "ModelServer": "prodml.core.interfaces",
    "Runner": "prodml.core.interfaces",
    "DatasetSchema": "prodml.core.interfaces",
    "TrainSpec": "prodml.core.interfaces",
    "TrainResult": "prodml.core.interfaces",
    "ModelRef": "prodml.core.interfaces",
    "ModelVersion": "prodml.core.interfaces",
    "Endpoint": "prodml.core.interfaces",
    "ServerStatus": "prodml.core.interfaces",
    "RunSummary": "prodml.core.interfaces",
    "SecretEnv": "prodml.core.interfaces",
    "KServeStorage": "prodml.core.interfaces",
    "LatestMove": "prodml.core.interfaces",
    "MOVE_REASONS": "prodml.core.interfaces",
    # errors
    "ProdmlError": "prodml.core.errors",
    "ConfigError": "prodml.core.errors",
    "DataError": "prodml.core.errors",
    "BundleError": "prodml.core.errors",
    "TrainingError": "prodml.core.errors",
    "StoreError": "prodml.core.errors",
    "ServingError": "prodml.core.errors",
    "RunnerError": "prodml.core.errors",
    "PluginError": "prodml.core.errors",
    "MissingDependencyError": "prodml.core.errors",
    "GatedError": "prodml.core.errors",
    # the bundle
    "MANIFEST": "prodml.core.bundle",
    "METADATA": "prodml.core.bundle",
    "BundleMetadata": "prodml.core.bundle",
    "FeatureInfo": "prodml.core.bundle",
    "verify_bundle": "prodml.core.bundle",
    "parse_manifest": "prodml.core.bundle",
    "read_manifest": "prodml.core.bundle",
    "write_manifest": "prodml.core.bundle",
    "manifest_digest": "prodml.core.bundle",
    "new_version_id": "prodml.core.bundle",
    "bundle_files": "prodml.core.bundle",
    "safe_relpath": "prodml.core.bundle",
    "sha256_file": "prodml.core.bundle",
    "frame_fingerprint": "prodml.core.bundle",
}

__all__ = [
    "MANIFEST",
    "METADATA",
    "MOVE_REASONS",
    "ROLES",
    "Backend",
    "BundleError",
    "BundleMetadata",
    "Command",
    "ConfigError",
    "ConfigPath",
    "DataError",
    "DataSource",
    "DatasetSchema",
    "Endpoint",
    "FeatureInfo",
    "GatedError",
    "KServeStorage",
    "LatestMove",
    "MissingDependencyError",
    "ModelRef",
    "ModelServer",
    "ModelStore",
    "ModelVersion",
    "PluginConfig",
    "PluginError",
    "ProdmlConfig",
    "ProdmlError",
    "Role",
    "RunSummary",
    "Runner",
    "RunnerError",
    "SecretEnv",
    "ServerStatus",
    "ServingError",
    "StoreError",
    "TrainResult",
    "TrainSpec",
    "Trainer",
    "TrainingError",
    "bundle_files",
    "frame_fingerprint",
    "hookimpl",
    "manifest_digest",
    "new_version_id",
    "parse_manifest",
    "read_manifest",
    "safe_relpath",
    "sha256_file",
    "verify_bundle",
    "write_manifest",
]


def __getattr__(name: str) -> Any:
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module 'prodml.plugin' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time names load on first use
    from prodml.core.bundle import (
        MANIFEST,
        METADATA,
        BundleMetadata,
        FeatureInfo,
        bundle_files,
        frame_fingerprint,
        manifest_digest,
        new_version_id,
        parse_manifest,
        read_manifest,
        safe_relpath,
        sha256_file,
        verify_bundle,
        write_manifest,
    )
    from prodml.core.config import ConfigPath, PluginConfig, ProdmlConfig
    from prodml.core.errors import (
        BundleError,
        ConfigError,
        DataError,
        GatedError,
        MissingDependencyError,
        PluginError,
        ProdmlError,
        RunnerError,
        ServingError,
        StoreError,
        TrainingError,
    )
    from prodml.core.hookspecs import hookimpl
    from prodml.core.interfaces import (
        MOVE_REASONS,
        ROLES,
        DatasetSchema,
        DataSource,
        Endpoint,
        KServeStorage,
        LatestMove,
        ModelRef,
        ModelServer,
        ModelStore,
        ModelVersion,
        Role,
        Runner,
        RunSummary,
        SecretEnv,
        ServerStatus,
        Trainer,
        TrainResult,
        TrainSpec,
    )
    from prodml.core.plugins import Backend, Command
