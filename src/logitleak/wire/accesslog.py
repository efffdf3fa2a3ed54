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


_IN_TEXT = re.compile(r"([?&][^=&\s\"']*(?:key|token|secret|pass|auth|sig|cred|session)[^=&\s\"']*=)[^&\s\"']*",
                      re.IGNORECASE)


def redact_text(text: str) -> str:
    """Key-like query values redacted wherever a URL appears in ``text``."""
    return _IN_TEXT.sub(lambda m: m.group(1) + REDACTED, text)


class RedactQueryFilter(logging.Filter):
    """A log filter that redacts key-like query values in a record's arguments (uvicorn's access
    log passes the path with its query; httpx's request log passes the URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any("?" in str(a) for a in args):
            record.args = tuple(redact_url(a) if isinstance(a, str) and a.startswith("/")
                                else redact_text(str(a)) if "?" in str(a) else a for a in args)
        if isinstance(record.msg, str) and "?" in record.msg:
            record.msg = redact_text(record.msg)
        return True


def redact_logger(name: str) -> None:
    """Put :class:`RedactQueryFilter` on the logger ``name`` (once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactQueryFilter) for f in logger.filters):
        logger.addFilter(RedactQueryFilter())


def uvicorn_log_config() -> dict:
    """uvicorn's default logging configuration with :class:`RedactQueryFilter` on the access log."""
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg.setdefault("filters", {})["redact_query"] = {"()": f"{__name__}.RedactQueryFilter"}
    cfg["loggers"].setdefault("uvicorn.access", {})["filters"] = ["redact_query"]
    return cfg
