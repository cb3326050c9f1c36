"""Generate the config reference (docs/config-reference.md) from the pydantic models.

``python -m prodml.core.reference > docs/config-reference.md`` rewrites it; a test checks the
committed file equals the generated text, so the reference cannot drift from the code.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from prodml.core.config import ConfigBase, GateConfig
from prodml.core.interfaces import ROLES
from prodml.core.plugins import Registry

HEADER = """# Config reference

Generated from the config classes by `python -m prodml.core.reference`; do not edit by hand.
Every section forbids unknown keys. Strings may use `${env:NAME}` or `${env:NAME:-default}`;
relative paths resolve against the config file's folder; fields of type `secret` are masked
everywhere prodml prints or writes a config.
"""


def type_name(annotation: Any) -> str:
    """A short, readable name for a field's type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        suffix = " \\| null" if type(None) in args else ""
        return " \\| ".join(names) + suffix
    if origin in (list, tuple, set, frozenset):
        inner = [type_name(a) for a in args if a is not Ellipsis]
        return f"list[{', '.join(inner)}]" if inner else "list"
    if origin in (dict, typing.Mapping) or annotation is dict:
        return "mapping"
    if annotation is SecretStr:
        return "secret"
    if isinstance(annotation, type):
        if annotation.__module__ == "pathlib" or annotation.__name__.endswith("Path"):
            return "path"
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, annotation.__name__
        )
    return re.sub(r"typing\.|pathlib\.", "", str(annotation))


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        try:
            value = field.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return "(computed)"
    else:
        value = field.default
    if value is PydanticUndefined:
        return "**required**"
    if value is None:
        return "null"
    if isinstance(value, BaseModel):
        return "(see type)"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{value!r}`".replace("|", "\\|")


def field_rows(model: type[BaseModel], *, skip: frozenset[str] = frozenset()) -> list[str]:
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        description = (field.description or "").replace("\n", " ").replace("|", "\\|")
        key = field.alias or name
        rows.append(f"| `{key}` | {type_name(field.annotation)} | {default_text(field)} | {description} |")
    return rows


def generate(registry: Registry | None = None) -> str:
    """The whole reference as Markdown, for the built-in backends only."""
    registry = registry or Registry(autoload=False)
    out = [HEADER, "## Top level", ""]
    out += field_rows(ConfigBase)
    out.append(
        "| `source`, `trainer`, `store`, `server`, `runner` | section | see below | "
        "one backend per role, chosen by `type` |"
    )
    out += ["", "## `gate`", "", inspect.getdoc(GateConfig) or "", ""]
    out += field_rows(GateConfig)
    for role in ROLES:
        out += ["", f"## `{role}`", ""]
        for name, installed in sorted(registry.types(role).items()):
            backend = installed.backend
            doc = inspect.getdoc(backend.config) or ""
            extra = f" Needs `pip install 'prodml[{backend.extra}]'`." if backend.extra else ""
            out += [f"### `{role}: {{type: {name}}}`", "", f"{doc}{extra}".strip(), ""]
            out += field_rows(backend.config, skip=frozenset({"type"}))
            out.append("")
            for value, variant in getattr(backend.config, "variants", {}).items():
                # a config split by `mode` (or another key): each variant's own keys
                key = getattr(backend.config, "variant_key", "mode")
                shared = frozenset(backend.config.model_fields)
                out += [f"#### `{key}: {value}`", "", inspect.getdoc(variant) or "", ""]
                out += field_rows(variant, skip=shared)
                out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(generate(), end="")
