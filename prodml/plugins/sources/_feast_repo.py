"""Find the Feast objects a feature repository defines, as ``feast apply`` would.

Feast's own ``parse_repo`` changes the working directory and exits the process on some
errors; prodml is a library (it runs inside kfp steps and model servers), so it imports the
repository's Python files itself: the same files ``feast apply`` reads (``.feastignore``
honoured), each under a private module name, with the repository on ``sys.path`` while they
run so that sibling imports work. Imported only by the feast source, after feast itself.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from prodml.core.errors import ConfigError


def definition_files(repo_path: Path) -> list[Path]:
    """The Python files ``feast apply`` would import from ``repo_path``."""
    from feast.repo_operations import get_repo_files

    return get_repo_files(Path(repo_path).resolve())


def load_definitions(repo_path: Path) -> list[Any]:
    """Import the repository's definition files and return the Feast objects they define.

    Returns entities, data sources, feature views (batch, stream, on-demand) and feature
    services, each once (an object imported by several files is kept once; two different
    objects with one name are an error, as they are for ``feast apply``).

    Raises:
        ConfigError: a definition file fails to import, or two objects share a name.
    """
    from feast import Entity, FeatureService
    from feast.data_source import DataSource
    from feast.feature_view import FeatureView
    from feast.on_demand_feature_view import OnDemandFeatureView

    kinds = (Entity, DataSource, FeatureView, OnDemandFeatureView, FeatureService)
    root = Path(repo_path).resolve()
    tag = hashlib.sha256(str(root).encode()).hexdigest()[:10]
    found: dict[tuple[str, str], Any] = {}
    added_path = str(root) not in sys.path
    if added_path:
        sys.path.insert(0, str(root))
    try:
        for number, file in enumerate(definition_files(root)):
            # the file's size and mtime are part of the name: an edited file is imported afresh
            stat = file.stat()
            version = hashlib.sha256(f"{tag}{stat.st_size}{stat.st_mtime_ns}".encode()).hexdigest()[:8]
            module_name = f"_prodml_feast_repo_{tag}_{number}_{version}_{file.stem}"
            module = sys.modules.get(module_name)
            if module is None:
                module = _import_file(module_name, file, root)
            for value in vars(module).values():
                if not isinstance(value, kinds):
                    continue
                kind = next(k.__name__ for k in kinds if isinstance(value, k))
                key = (kind, value.name)
                seen = found.get(key)
                if seen is None:
                    found[key] = value
                elif seen is not value and seen != value:
                    raise ConfigError(
                        f"the Feast repository {root} defines two different {kind} objects "
                        f"named {value.name!r}; give each a unique name",
                        field="source.repo_path",
                    )
    finally:
        if added_path:
            sys.path.remove(str(root))
    objects = list(found.values())
    _absolute_file_paths(objects, root)
    return objects


def _absolute_file_paths(objects: list[Any], root: Path) -> None:
    """Make relative FileSource paths absolute (against the repository).

    Feast's file offline store resolves them against the repository, but its DuckDB store
    (0.67) and some readers resolve them against the working directory; absolute paths in
    the (local, regenerated) registry make every store read the same files from anywhere.
    """
    from feast import FileSource
    from feast.feature_view import FeatureView

    sources = [o for o in objects if isinstance(o, FileSource)]
    sources += [o.batch_source for o in objects if isinstance(o, FeatureView)]
    for source in sources:
        if not isinstance(source, FileSource):
            continue
        uri = source.file_options.uri
        if uri and "://" not in uri and not Path(uri).is_absolute():
            source.file_options.uri = str(root / uri)


def _import_file(module_name: str, file: Path, root: Path) -> Any:
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {file} of the Feast repository {root}", field="source.repo_path")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's file: report which one and why, keep the cause
        del sys.modules[module_name]
        raise ConfigError(
            f"importing {file.relative_to(root)} of the Feast repository {root} failed: "
            f"{type(exc).__name__}: {exc}",
            field="source.repo_path",
            hint="fix the definition file (it must run with `python` from the repository folder), "
            "or list it in .feastignore",
        ) from exc
    return module
