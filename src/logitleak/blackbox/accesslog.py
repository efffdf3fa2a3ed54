"""Access logs that never show credentials: query-string values of key-like parameters are redacted."""

from __future__ import annotations

import copy
import logging
import re
from urllib.parse import parse_qsl, quote

SENSITIVE = re.compile(r"key|token|secret|pass|auth|sig|cred|session", re.IGNORECASE)
REDACTED = "[redacted]"


def redact_url(path: str) -> str:
    """``/v1/models?api_key=sk-1&x=2`` -> ``/v1/models?api_key=[redacted]&x=2`` (a query that does not
    parse is redacted whole)."""
    base, sep, query = path.partition("?")
    if not sep:
        return path
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        return f"{base}?{REDACTED}"
    return base + "?" + "&".join(f"{quote(k)}={REDACTED if SENSITIVE.search(k) else quote(v)}" for k, v in pairs)


class RedactQueryFilter(logging.Filter):
    """A filter for uvicorn's access logger (its record's third argument is the path with its query)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = args[:2] + (redact_url(args[2]),) + args[3:]
        return True


def uvicorn_log_config() -> dict:
    """uvicorn's default logging configuration with :class:`RedactQueryFilter` on the access log."""
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg.setdefault("filters", {})["redact_query"] = {"()": f"{__name__}.RedactQueryFilter"}
    cfg["loggers"].setdefault("uvicorn.access", {})["filters"] = ["redact_query"]
    return cfg
