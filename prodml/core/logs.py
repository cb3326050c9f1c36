"""Keep credentials out of every log line, whoever logs it.

Secret values from the loaded config are registered here; a log-record factory replaces
them with ``***`` in every record before any handler sees it, so also in third-party SDK
logs (botocore wire traces, azure-core request logs) and in pytest's captured logs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator

_lock = threading.Lock()
_secrets: set[str] = set()
_installed = False
MASK = "***"
ANSI_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def register_secret(value: str | None) -> None:
    """Mask ``value`` in all log output from now on (short values are ignored)."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)
        install_redaction()


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def install_redaction() -> None:
    """Install the redacting log-record factory (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args, **kwargs) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            if _secrets:
                try:
                    message = record.getMessage()
                except Exception:  # a broken format string is the caller's bug, not ours
                    return record
                cleaned = redact(message)
                if cleaned != message:
                    record.msg, record.args = cleaned, None
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


# -- console noise --------------------------------------------------------------------------

#: loggers whose records a normal (not ``-v``) run shows from WARNING up; others from ERROR
OUR_LOGGERS = ("prodml",)
_verbosity: int | None = None


class _OurRecordsOnly(logging.Filter):
    """A normal run's console: prodml's warnings, and only errors from the SDKs underneath."""

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == "prodml" or record.name.startswith("prodml.")
        return ours or record.levelno >= logging.ERROR


def configure_console(verbosity: int) -> None:
    """Set up the CLI's console logging: ``0`` shows prodml's own lines, ``-v``/``-vv`` the rest.

    At verbosity 0 the SDKs' chatter is kept out: TensorFlow's C++ log (set before TensorFlow
    is imported, and inherited by the model server and pipeline step processes), Python
    warnings (Keras, NumPy, FastAPI deprecations) and third-party log records below ERROR.
    ``-v`` shows all of it.
    """
    global _verbosity
    root = logging.getLogger()
    if root.handlers:
        # logging is already set up (an application embedding prodml, pytest): leave it be,
        # as logging.basicConfig would
        install_redaction()
        return
    _verbosity = verbosity
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if verbosity == 0:
        handler.addFilter(_OurRecordsOnly())
        # child processes (model server, kfp.local steps) inherit these; forced, not defaulted:
        # a value inherited from a parent that imported TensorFlow (2) lets its C++ ERROR lines
        # and absl's preamble through
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        os.environ.setdefault("PYTHONWARNINGS", "ignore")
        warnings.simplefilter("ignore")
    # warnings become log records (py.warnings): shown with -v, held back by the filter
    # otherwise - also when an SDK resets the warning filters on import (Feast/Keras do)
    logging.captureWarnings(True)
    root.addHandler(handler)
    root.setLevel(level)
    install_redaction()


def quiet() -> bool:
    """True when the CLI runs at normal verbosity (third-party output is held back)."""
    return _verbosity == 0


@contextlib.contextmanager
def hold_output(what: str) -> Iterator[io.StringIO]:
    """Keep what third-party code prints to stdout (kfp.local's step logs, Feast's progress
    lines) off a normal run's console; with ``-v``, or when not run from the CLI, let it through.

    When the block raises, the held-back output goes to stderr (secrets masked, colour codes
    removed), so the failure keeps its context.
    """
    held = io.StringIO()
    if not quiet():
        yield held
        return
    try:
        with contextlib.redirect_stdout(held):
            yield held
    except BaseException:
        text = ANSI_CODES.sub("", redact(held.getvalue())).rstrip()
        if text:
            print(f"--- output of {what} (shown because it failed) ---\n{text}", file=sys.stderr)
        raise
