"""The errors prodml raises on purpose.

Every error a user can cause (a bad config, bad data, an unreachable store, a broken model
file) is a :class:`ProdmlError`. The CLI prints its message without a traceback and exits
non-zero: 2 for config errors, 3 when a model gate kept a new version out of ``latest``
(:class:`GatedError`), 1 otherwise; an interrupted command exits 130. Messages name what
is wrong and how to fix it, and never contain a credential.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ProdmlError(Exception):
    """Base class of every error prodml raises for the user to act on."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")


class ConfigError(ProdmlError):
    """The config file is invalid. Names the file and, where known, the field path."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.file = file
        self.field = field
        text = f"{field}: {message}" if field else message
        if file:
            text = f"{text} ({file})"
        super().__init__(text, hint=hint)


class PluginError(ProdmlError):
    """A plugin could not be loaded or registered (e.g. two plugins claim one type)."""


class UnknownBackendError(ConfigError):
    """A ``type:`` that no installed plugin provides."""

    def __init__(
        self,
        role: str,
        name: str,
        installed: Iterable[str],
        *,
        file: str | None = None,
        aliases: dict[str, str] | None = None,
        hint: str | None = None,
    ) -> None:
        names = sorted(installed)
        listing = ", ".join(names) if names else "none"
        message = f"{role} type {name!r} is not installed; installed: {listing}"
        aliases = aliases or {}
        suggestion = closest(str(name), [*names, *aliases])
        suggestion = aliases.get(suggestion, suggestion) if suggestion else None
        if suggestion:
            message += f" — did you mean {suggestion!r}?"
        self.role = role
        self.name = name
        self.installed = names
        super().__init__(message, file=file, hint=hint)


class MissingDependencyError(ProdmlError):
    """A backend's optional dependency is not installed; says what to install.

    ``package`` is the distribution that provides the backend (``prodml`` for the built-in
    ones); its ``extra`` installs the dependency: ``pip install 'prodml[s3]'``.
    """

    def __init__(
        self, role: str, name: str, module: str, extra: str | None, *, package: str | None = "prodml"
    ) -> None:
        self.module = module
        self.extra = extra
        self.package = package
        if extra and package:
            fix = f"pip install '{package}[{extra}]'"
        else:
            fix = f"pip install {module.split('.')[0]}"
        self.fix = fix
        provider = f" (from {package})" if package and package != "prodml" else ""
        super().__init__(
            f"{role} type {name!r}{provider} needs the Python package {module!r}, which is not installed",
            hint=fix,
        )


class DataError(ProdmlError):
    """Training or request data is unusable (missing column, NaNs, wrong dtype, ...)."""


class BundleError(ProdmlError):
    """A model bundle is incomplete, tampered with or cannot be loaded."""


class TrainingError(ProdmlError):
    """The user's model code failed or produced something unusable."""


class StoreError(ProdmlError):
    """A model store operation failed (unreachable, denied, missing version, ...)."""


class ServingError(ProdmlError):
    """The model server could not be started, reached or deployed."""


class RunnerError(ProdmlError):
    """A run could not be started, resumed, compiled or submitted."""


class GatedError(ProdmlError):
    """A model gate kept a new version out of ``latest`` (exit status 3, not a failure).

    The version is stored; ``latest`` and the served model did not change. ``decision``
    is the :class:`prodml.lifecycle.GateDecision` that said no.
    """

    exit_code = 3

    def __init__(self, message: str, *, hint: str | None = None, decision: object = None) -> None:
        self.decision = decision
        super().__init__(message, hint=hint)


def closest(word: str, choices: Iterable[str]) -> str | None:
    """Return the choice closest to ``word``, or None when nothing is close."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return found[0] if found else None
