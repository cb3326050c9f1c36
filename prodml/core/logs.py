"""Keep credentials out of every log line, whoever logs it.

Secret values from the loaded config are registered here; a log-record factory replaces
them with ``***`` in every record before any handler sees it, so also in third-party SDK
logs (botocore wire traces, azure-core request logs) and in pytest's captured logs.
"""

from __future__ import annotations

import logging
import threading

_lock = threading.Lock()
_secrets: set[str] = set()
_installed = False
MASK = "***"


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
