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
from typing import Any

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


# -- TensorFlow's import-time C++ log --------------------------------------------------------

#: a native log record: absl's ``I0000 00:00:1796.. 4642 port.cc:153] ...`` or TensorFlow's own
#: ``2026-11-30 12:00:00.000001: I tensorflow/core/....cc:42] ...``; group 1 is the severity
NATIVE_RECORD = re.compile(
    rb"^(?:([IWEF])\d{4} [\d:.]+\s+\d+ |\d{4}-\d\d-\d\d [\d:.]+: ([IWEF]) )[^\s\]]+:\d+\] "
)
#: what absl prints once before its first record when nothing initialised its log
ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
#: second lines of TensorFlow's multi-line start-up records (cpu_feature_guard.cc)
NATIVE_CONTINUATIONS = (b"To enable the following instructions:",)
_SEVERITIES = b"IWEF"


def tf_min_log_level() -> int:
    """``TF_CPP_MIN_LOG_LEVEL`` as TensorFlow reads it: 0 shows all, 1 no INFO, 2 no WARNING, 3 no ERROR."""
    try:
        return max(0, min(3, int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))))
    except ValueError:
        return 0


class _NativeLogFilter:
    """Line filter for what native code writes to fd 2: records below ``level`` are dropped
    (with absl's preamble and their known continuation lines); every other line is kept."""

    def __init__(self, level: int) -> None:
        self.level = level
        self._pending = b""
        self._dropping = False

    def _keep(self, line: bytes) -> bool:
        if line.rstrip(b"\r\n") == ABSL_PREAMBLE:
            return self.level == 0
        match = NATIVE_RECORD.match(line)
        if match:
            severity = (match.group(1) or match.group(2))[0]
            self._dropping = _SEVERITIES.index(severity) < self.level
            return not self._dropping
        if self._dropping and line.startswith(NATIVE_CONTINUATIONS):
            return False
        self._dropping = False
        return True

    def feed(self, data: bytes) -> bytes:
        """The complete lines of ``pending + data`` that are kept (a partial line waits)."""
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        return b"".join(line + b"\n" for line in lines if self._keep(line + b"\n"))

    def close(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest if rest and self._keep(rest) else b""


@contextlib.contextmanager
def native_log_filtered(level: int) -> Iterator[None]:
    """While the block runs, fd 2 goes through a pipe whose reader drops native log records
    below ``level`` and passes everything else on to the real stderr as it comes.

    For C++ libraries that log before they read their log-level setting. Output is forwarded
    line by line while the block runs, so a crash inside it still leaves its message; a
    process the block starts that keeps the pipe open is read until it closes it.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    read_end, write_end = os.pipe()
    native = _NativeLogFilter(level)

    def write(data: bytes) -> None:
        with contextlib.suppress(OSError):  # a closed stderr: keep reading, as writing there would
            while data:
                data = data[os.write(saved, data) :]

    def forward() -> None:
        # closes the two ends it owns only at the pipe's end, after the block gave fd 2 back
        try:
            while chunk := os.read(read_end, 65536):
                write(native.feed(chunk))
            write(native.close())
        finally:
            os.close(read_end)
            os.close(saved)

    reader = threading.Thread(target=forward, name="native-log-filter", daemon=True)
    reader.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer was fd 2: the reader sees its end
        reader.join(timeout=5)


def import_tensorflow() -> Any:
    """``import tensorflow``, with its import-time C++ log held to ``TF_CPP_MIN_LOG_LEVEL``.

    TensorFlow 2.19 and later log through absl while their libraries load, before the
    variable is read: on a CPU with oneDNN's fast paths (AVX-512) every import printed absl's
    preamble and an INFO line about oneDNN, twice, past ``TF_CPP_MIN_LOG_LEVEL=3``. Those
    lines are dropped when the variable asks for it; anything else on stderr passes.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    level = tf_min_log_level()
    if level == 0:
        import tensorflow
    else:
        with native_log_filtered(level):
            import tensorflow
    return tensorflow
