"""One rule for tests that need an optional SDK: skip on a partial install, fail under CI.

A developer with only some extras installed runs the tests that apply to them; a CI run
(``CI=true``) has every extra, so a missing SDK there is a broken install that must fail
the run rather than quietly skip whole modules. Use it at module level::

    tf = needs_sdk("tensorflow", extra="tensorflow")

``tests/conftest.py`` applies the same rule to ``pytest.importorskip``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from prodml.testing.services import in_ci

#: the start of pytest.importorskip's skip reason; conftest fails such skips under CI
IMPORTORSKIP_REASON = "could not import"
#: the start of this module's skip reason
NEEDS_SDK_REASON = "needs the SDK"


def needs_sdk(module: str, *, extra: str | None = None) -> ModuleType:
    """Import ``module``; when it cannot be imported, skip (or, under ``CI=true``, fail).

    Any ImportError counts, not only a missing module: an SDK that is installed but broken
    (a missing native library, an incompatible dependency) is as unusable as an absent one.

    Args:
        module: the module to import, e.g. ``"tensorflow"`` or ``"kfp.local"``.
        extra: the prodml extra that installs it (named in the message).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        fix = f"pip install 'prodml[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
        message = f"{NEEDS_SDK_REASON} {module!r}: {type(exc).__name__}: {exc} (install: {fix})"
        if in_ci():
            pytest.fail(f"CI=true and a test {message}", pytrace=False)
        pytest.skip(message, allow_module_level=True)
        raise  # pragma: no cover - pytest.skip raises


def is_missing_sdk_skip(reason: str) -> bool:
    """Whether a skip reason says an SDK could not be imported (importorskip or needs_sdk)."""
    return reason.removeprefix("Skipped: ").startswith((IMPORTORSKIP_REASON, NEEDS_SDK_REASON))
