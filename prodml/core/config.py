"""Loading and validating a prodml config file.

YAML (``yaml.safe_load`` only) -> ``${env:...}`` interpolation -> one pydantic model whose
role sections (``source``, ``trainer``, ``store``, ``server``, ``runner``) are discriminated
unions on ``type``, built from the installed plugins. Every model forbids unknown keys.
Relative paths (fields typed :data:`ConfigPath`) resolve against the config file's folder.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    SecretStr,
    Tag,
    ValidationError,
    ValidationInfo,
    create_model,
    model_validator,
)

from prodml.core.errors import ConfigError, closest
from prodml.core.interfaces import ROLES, Role
from prodml.core.logs import register_secret
from prodml.core.plugins import Registry, default_registry

StageName = Literal["fetch", "train", "export", "serve"]
STAGES: tuple[StageName, ...] = ("fetch", "train", "export", "serve")
#: the role each stage needs (serve also needs the store it reads from)
STAGE_ROLES: dict[str, tuple[Role, ...]] = {
    "fetch": ("source",),
    "train": ("trainer",),
    "export": ("store",),
    "serve": ("server", "store"),
}
ENV_PATTERN = re.compile(r"\$(\$?)\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
PROJECT_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class PluginConfig(BaseModel):
    """Base for plugin config classes: frozen, unknown keys forbidden.

    Schemas are built on first use (``defer_build``): every installed backend's config
    class is defined when the registry loads, but a run validates only the few it names.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class VariantConfig(PluginConfig):
    """A plugin config split into one class per value of a key (e.g. the kserve server's ``mode``).

    The registered class (the base) holds the fields every variant shares and names its
    variants in ``variants``; validating or constructing the base gives an instance of the
    variant that ``variant_key`` selects (``default_variant`` when the key is absent), so each
    variant forbids the others' keys while code keeps using the base's name. A key that
    belongs to another variant is reported as such (:meth:`key_hint`).
    """

    #: the key whose value picks the variant
    variant_key: ClassVar[str] = "mode"
    #: the variant used when the key is absent
    default_variant: ClassVar[str | None] = None
    #: {key value: variant class}; set on the base after its variants are defined
    variants: ClassVar[dict[str, type[VariantConfig]]] = {}

    @classmethod
    def variant_for(cls, data: Any) -> type[VariantConfig] | None:
        """The variant class ``data`` selects when ``cls`` is a base (None: not a base, or no match)."""
        if not cls.variants or cls in cls.variants.values() or not isinstance(data, Mapping):
            return None
        return cls.variants.get(str(data.get(cls.variant_key, cls.default_variant)))

    def __new__(cls, *args: Any, **data: Any) -> Any:
        # `Base(type=..., port=0)` builds the variant (pydantic then runs __init__ on it once
        # more, which re-validates the same data into the same object)
        target = cls.variant_for(data)
        if target is not None:
            return target(**data)
        return super().__new__(cls)

    @model_validator(mode="wrap")
    @classmethod
    def _to_variant(cls, data: Any, handler: Any, info: ValidationInfo) -> Any:
        if not cls.variants or cls in cls.variants.values():
            return handler(data)
        target = cls.variant_for(data)
        if target is not None:
            return target.model_validate(data, context=info.context)
        if isinstance(data, Mapping):
            # an unknown variant: report the key's valid values, not every other key as unknown
            data = {k: v for k, v in data.items() if k in cls.model_fields}
        return handler(data)

    @classmethod
    def key_hint(cls, key: str) -> str | None:
        """Which other variant ``key`` belongs to, e.g. ``'port' is a mode: local setting``."""
        owners = [
            value
            for value, variant in (cls.variants or {}).items()
            if variant is not cls and key in variant.model_fields
        ]
        if not owners or key in cls.model_fields:
            return None
        mine = next((v for v, c in cls.variants.items() if c is cls), None)
        here = f" (this section has {cls.variant_key}: {mine})" if mine else ""
        which = " or ".join(f"`{cls.variant_key}: {o}`" for o in owners)
        return f"{key!r} is a {which} setting{here}"


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context or {}
    return Path(context.get("base_dir") or os.getcwd())


def resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Resolve a relative path against the config file's folder (absolute ones unchanged)."""
    value = Path(os.path.expanduser(str(value)))
    if value.is_absolute():
        return value
    return (_base_dir(info) / value).resolve()


#: A filesystem path in a config; relative values are resolved against the config's folder.
ConfigPath = Annotated[Path, AfterValidator(resolve_path)]


def config_base_dir(info: ValidationInfo) -> Path:
    """The folder relative paths resolve against (for validators of plugin configs)."""
    return _base_dir(info)


def interpolate(value: Any, *, path: str = "", file: str | None = None) -> Any:
    """Replace ``${env:NAME}`` / ``${env:NAME:-default}`` in every string of ``value``.

    ``$${env:NAME}`` is kept literally as ``${env:NAME}``.
    """
    if isinstance(value, dict):
        return {
            k: interpolate(v, path=f"{path}.{k}" if path else str(k), file=file) for k, v in value.items()
        }
    if isinstance(value, list):
        return [interpolate(v, path=f"{path}[{i}]", file=file) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        escaped, name, default = match.groups()
        if escaped:
            return match.group(0)[1:]
        found = os.environ.get(name)
        if found is not None:
            return found
        if default is not None:
            return default
        raise ConfigError(
            f"environment variable {name} is not set",
            file=file,
            field=path or None,
            hint=f"export {name}=... or write ${{env:{name}:-default}} for a fallback",
        )

    return ENV_PATTERN.sub(substitute, value)


def _tag_of(value: Any) -> Any:
    if isinstance(value, Mapping):
        return value.get("type")
    return getattr(value, "type", None)


def _role_union(registry: Registry, role: Role, only: str | None = None) -> Any:
    classes = [
        Annotated[cls, Tag(name)]
        for name, cls in registry.config_classes(role)
        if only is None or name == only
    ]
    if not classes:
        return None
    return Annotated[Union[tuple(classes)], Discriminator(_tag_of)]  # noqa: UP007


class GateConfig(BaseModel):
    """A new version becomes `latest` only if it is no worse than the current one.

    Both are measured on the same evaluation rows (the candidate's; the current `latest` is
    re-scored when its recorded rows differ). A version the gate keeps out is still stored,
    and the run exits with status 3. Without a `gate:` section every export moves `latest`.
    See docs/lifecycle.md.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(
        description="an evaluation metric the model records, e.g. `loss`, `mae`, `accuracy` "
        "(`val_loss` means `loss` on the evaluation rows)",
        min_length=1,
    )
    mode: Literal["min", "max"] = Field("min", description="`min`: lower is better (losses); `max`: higher")
    tolerance: float = Field(
        0.0, ge=0, description="how much worse than the current latest (absolute) still passes"
    )


class ConfigBase(BaseModel):
    """The fixed top-level keys; role sections are added per registry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str = Field(
        pattern=PROJECT_PATTERN,
        description="name of the project; the default model name (lowercase letters, digits, '-')",
    )
    stages: tuple[StageName, ...] = Field(
        STAGES, description="stages to run, in order: a contiguous part of fetch, train, export, serve"
    )
    gate: GateConfig | None = Field(
        None, description="keep a new version out of `latest` unless it is no worse (see GateConfig)"
    )
    _source_file: Path | None = PrivateAttr(None)
    _base_dir: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check_stages(self) -> ConfigBase:
        stages = list(self.stages)
        if not stages:
            raise ValueError("stages: is empty; list at least one of fetch, train, export, serve")
        if len(set(stages)) != len(stages):
            raise ValueError(f"stages: lists a stage twice: {stages}")
        positions = [STAGES.index(s) for s in stages]
        if positions != sorted(positions):
            raise ValueError(f"stages: stages {stages} are out of order; the order is {list(STAGES)}")
        for before, after in itertools.pairwise(positions):
            if after != before + 1:
                gap = STAGES[before + 1 : after]
                raise ValueError(
                    f"stages: stage {STAGES[after]!r} needs {', '.join(map(repr, gap))} before it "
                    f"(stages {stages} skip it); the order is {list(STAGES)}"
                )
        for stage in stages:
            for role in STAGE_ROLES[stage]:
                if getattr(self, role, None) is None:
                    raise ValueError(
                        f"stages: stage {stage!r} needs a `{role}:` section (or remove {stage!r} from stages)"
                    )
        return self

    @property
    def source_file(self) -> Path | None:
        """The YAML file this config was read from (None when built from a dict)."""
        return self._source_file

    @property
    def base_dir(self) -> Path:
        """The folder relative paths were resolved against."""
        return self._base_dir or Path.cwd()

    @property
    def model_name(self) -> str:
        """Name the model is stored and served under (the project name)."""
        return self.project

    def section(self, role: Role) -> BaseModel | None:
        """The validated config section of ``role`` (None when absent)."""
        return getattr(self, role)

    def public_dict(self) -> dict[str, Any]:
        """The config as plain data with every secret removed (for pipelines, digests).

        Secret fields are dropped entirely, so the consumer falls back to the backend's
        standard credential source (environment variables from a Kubernetes Secret, ...).
        """
        return _strip_secrets(self)

    def secret_values(self) -> list[str]:
        """The plain values of every secret in this config (for leak checks)."""
        found: list[str] = []
        _collect_secrets(self, found)
        return [s for s in found if s]

    def digest(self, sections: tuple[str, ...] | None = None) -> str:
        """sha256 of the public (secret-free) config, or of some of its top-level keys."""
        import hashlib
        import json

        public = self.public_dict()
        if sections is not None:
            public = {k: v for k, v in public.items() if k in sections}
        text = json.dumps(public, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def model_digest(self) -> str:
        """sha256 of what determines the trained model (project, source, trainer), secret-free.

        Recorded in prodml.json: the same data and model code give the same digest whichever
        store, server or runner a run used.
        """
        return self.digest(("project", "source", "trainer"))


#: The type of a loaded config (a subclass of ConfigBase built for the installed plugins).
ProdmlConfig = ConfigBase


def _strip_secrets(model: BaseModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            continue
        out[name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return _strip_secrets(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items() if not isinstance(v, SecretStr)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _collect_secrets(value: Any, found: list[str]) -> None:
    if isinstance(value, SecretStr):
        found.append(value.get_secret_value())
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            _collect_secrets(getattr(value, name), found)
    elif isinstance(value, Mapping):
        for v in value.values():
            _collect_secrets(v, found)
    elif isinstance(value, list | tuple):
        for v in value:
            _collect_secrets(v, found)


@cache
def _model_for(registry: Registry, chosen: tuple[tuple[str, str], ...] | None = None) -> type[ConfigBase]:
    """The config model; with ``chosen`` ((role, type) pairs) only those types are in it.

    Validating a file needs only the types it names: building the schema of every
    installed backend's config (about 35 classes) would be most of `prodml validate`'s time.
    The sections keep the shape of the full model (a one-member tagged union), so error
    locations read the same.
    """
    only = dict(chosen) if chosen is not None else None
    fields: dict[str, Any] = {}
    for role in ROLES:
        if only is not None and role not in only:
            fields[role] = (None, None)
            continue
        union = _role_union(registry, role, None if only is None else only[role])
        if union is None:
            fields[role] = (None, Field(None, description=f"no {role} plugins installed"))
        elif role == "runner":
            fields[role] = (union, Field(default_factory=lambda: {"type": "local"}, validate_default=True))
        else:
            fields[role] = (union | None, None)
    return create_model("ProdmlConfig", __base__=ConfigBase, **fields)


def config_model(registry: Registry | None = None) -> type[ConfigBase]:
    """The pydantic model of a whole config for ``registry``'s installed plugins."""
    return _model_for(registry or default_registry())


def load_config(path: str | os.PathLike[str], *, registry: Registry | None = None) -> ConfigBase:
    """Read, interpolate and validate the YAML config at ``path``.

    Raises:
        ConfigError: naming the file and the field path of the first problems.
    """
    file = Path(path)
    shown = str(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "config file not found", file=shown, hint="pass the path of a prodml YAML file with -c"
        ) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file: {exc}", file=shown) from None
    data = parse_yaml(text, file=shown)
    return load_config_dict(
        data, base_dir=file.resolve().parent, file=shown, registry=registry, source_file=file.resolve()
    )


def parse_yaml(text: str, *, file: str | None = None) -> dict[str, Any]:
    """``yaml.safe_load`` with errors turned into :class:`ConfigError` (with line numbers)."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if "python/" in str(exc):
            problem = "YAML tags that build Python objects (!!python/...) are not allowed"
        raise ConfigError(f"not valid YAML{where}: {problem}", file=file) from None
    if data is None:
        raise ConfigError("config file is empty", file=file, hint="start from config/local.yaml")
    if not isinstance(data, dict):
        raise ConfigError(
            f"the top level must be a mapping of keys (project, source, ...), not {type(data).__name__}",
            file=file,
        )
    return data


def load_config_dict(
    data: Mapping[str, Any],
    *,
    base_dir: Path | None = None,
    file: str | None = None,
    registry: Registry | None = None,
    source_file: Path | None = None,
    interpolate_env: bool = True,
) -> ConfigBase:
    """Validate config data already parsed from YAML (interpolates ``${env:...}`` first).

    Pass ``interpolate_env=False`` for data that was interpolated already (a pipeline step's
    config parameter), so a literal written as ``$${env:X}`` stays literal.
    """
    registry = registry or default_registry()
    data = interpolate(dict(data), file=file) if interpolate_env else dict(data)
    _check_types(data, registry, file)
    chosen = [(role, str(data[role]["type"])) for role in ROLES if isinstance(data.get(role), Mapping)]
    if not isinstance(data.get("runner"), Mapping):
        chosen.append(("runner", "local"))  # the default runner
    model = _model_for(registry, tuple(chosen))
    base = Path(base_dir) if base_dir else Path.cwd()
    try:
        config = model.model_validate(data, context={"base_dir": base, "source_file": source_file})
    except ValidationError as exc:
        raise _config_error(exc, data, file, registry) from None
    config._source_file = source_file
    config._base_dir = base
    for secret in config.secret_values():
        register_secret(secret)
    return config


def _check_types(data: Mapping[str, Any], registry: Registry, file: str | None) -> None:
    """Report an unknown or missing ``type:`` with the installed choices (before pydantic)."""
    for role in ROLES:
        section = data.get(role)
        if section is None:
            continue
        if not isinstance(section, Mapping):
            raise ConfigError(
                f"must be a mapping with a `type:` key, not {type(section).__name__}",
                file=file,
                field=role,
            )
        installed = registry.types(role)
        if "type" not in section:
            raise ConfigError(
                f"`type` is required; installed {role} types: {', '.join(sorted(installed)) or 'none'}",
                file=file,
                field=f"{role}.type",
            )
        if section["type"] not in installed:
            registry.get(role, str(section["type"]), file=file)  # raises, naming where it looked


def _loc_path(loc: tuple[Any, ...], data: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for i, item in enumerate(loc):
        # discriminated unions add the tag after the role name: ('store', 's3', 'bucket')
        section = data.get(loc[0])
        if i == 1 and loc[0] in ROLES and isinstance(section, Mapping) and item == section.get("type"):
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _config_error(
    exc: ValidationError, data: Mapping[str, Any], file: str | None, registry: Registry
) -> ConfigError:
    messages = []
    first_field = None
    for error in exc.errors(include_url=False, include_input=False):
        loc = tuple(error["loc"])
        field = _loc_path(loc, data) or None
        kind = error["type"]
        if kind == "missing":
            msg = "field required"
        elif kind == "extra_forbidden":
            key = str(loc[-1]) if loc else "?"
            allowed = _allowed_keys(loc[:-1], data, registry)
            msg = f"unknown key {key!r}"
            guess = closest(key, allowed) if allowed else None
            variant_hint = _variant_hint(loc[:-1], key, data, registry)
            if variant_hint:
                msg = variant_hint
            elif guess:
                msg += f" — did you mean {guess!r}?"
            elif allowed:
                msg += f"; allowed keys: {', '.join(sorted(allowed))}"
        elif kind == "value_error":
            msg = str(error["msg"]).removeprefix("Value error, ")
        elif kind == "string_pattern_mismatch" and loc == ("project",):
            msg = (
                "must be lowercase letters, digits and '-', start and end with a letter "
                "or digit, at most 63 characters"
            )
        else:
            msg = str(error["msg"])
            msg = msg[0].lower() + msg[1:] if msg else msg
        first_field = first_field or field
        messages.append(f"{field}: {msg}" if field else msg)
    if len(messages) == 1:
        return ConfigError(messages[0], file=file)
    shown = "\n".join(f"  - {m}" for m in messages[:8])
    more = f"\n  (and {len(messages) - 8} more)" if len(messages) > 8 else ""
    where = f" in {file}" if file else ""
    return ConfigError(f"{len(messages)} problems{where}:\n{shown}{more}")


def _variant_hint(loc: tuple[Any, ...], key: str, data: Mapping[str, Any], registry: Registry) -> str | None:
    """For a role section split into variants: which variant ``key`` belongs to."""
    if not loc or loc[0] not in ROLES or len(loc) not in (1, 2):
        return None
    section = data.get(loc[0])
    if not isinstance(section, Mapping):
        return None
    try:
        cls = registry.get(loc[0], str(section.get("type"))).backend.config
    except ConfigError:
        return None
    if not issubclass(cls, VariantConfig):
        return None
    return (cls.variant_for(section) or cls).key_hint(key)


def _allowed_keys(loc: tuple[Any, ...], data: Mapping[str, Any], registry: Registry) -> list[str]:
    """Keys allowed at ``loc`` (top level or a role section), for suggestions."""
    if not loc:
        return ["project", "stages", "gate", *ROLES]
    if loc == ("gate",):
        return list(GateConfig.model_fields)
    if loc[0] in ROLES and len(loc) in (1, 2):
        section = data.get(loc[0])
        if isinstance(section, Mapping):
            try:
                cls = registry.get(loc[0], str(section.get("type"))).backend.config
            except ConfigError:
                return []
            if issubclass(cls, VariantConfig):
                cls = cls.variant_for(section) or cls
            return list(cls.model_fields)
    return []


def masked_summary(config: ConfigBase) -> dict[str, Any]:
    """The resolved config as plain data, secrets shown as ``'**********'``."""
    return config.model_dump(mode="json")
