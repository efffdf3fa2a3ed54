"""Access logs that never show credentials: key-like query values and key-like URL path segments are redacted."""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, unquote

SENSITIVE = re.compile(r"key|token|secret|pass|auth|sig|cred|session", re.IGNORECASE)
REDACTED = "[redacted]"

_CHARS = r"[A-Za-z0-9_\-]"
KEY_LIKE = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    # the prefixes providers put on their keys (OpenAI / Anthropic sk-, Hugging Face hf_, Groq gsk_, xAI,
    # GitHub, GitLab, Slack, Google AIza) and JSON web tokens
    r"(?:sk|pk|rk|hf|gsk|ghp|gho|ghs|ghu|glpat|github_pat|xai|xox[abposr])[-_]" + _CHARS + r"{8,}"
    r"|AIza" + _CHARS + r"{20,}"
    r"|eyJ" + _CHARS + r"{8,}\." + r"[A-Za-z0-9_\-.]+"
    # a long random token: 40+ characters mixing digits, lower and upper case (model names have dots or words)
    r"|(?=" + _CHARS + r"*\d)(?=" + _CHARS + r"*[a-z])(?=" + _CHARS + r"*[A-Z])" + _CHARS + r"{40,}"
    r")(?!" + _CHARS + r")")
"""A credential wherever it appears: in a path segment, a query value, or any logged text."""


def _scrub(text: str, secrets: Iterable[str] = ()) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, REDACTED)
    return KEY_LIKE.sub(REDACTED, text)


def redact_url(path: str, secrets: Iterable[str] = ()) -> str:
    """``/v1/models/sk-1?api_key=k&x=2`` -> ``/v1/models/[redacted]?api_key=[redacted]&x=2``:
    key-like path segments (percent-encoded or not), the values of key-like parameters and
    key-like values are redacted (a query that does not parse is redacted whole); ``secrets``
    (the server's own key) are redacted wherever they appear."""
    secrets = tuple(secrets)
    base, sep, query = path.partition("?")
    base = "/".join(REDACTED if _scrub(unquote(seg), secrets) != unquote(seg) else seg for seg in base.split("/"))
    if not sep:
        return base
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        return f"{base}?{REDACTED}"
    return base + "?" + "&".join(
        f"{quote(_scrub(k, secrets))}="
        f"{REDACTED if SENSITIVE.search(k) or _scrub(v, secrets) != v else quote(v)}" for k, v in pairs)


_URL = re.compile(r"(https?://[^/\s\"']+)(/[^\s\"']*)")
_IN_TEXT = re.compile(r"([?&][^=&\s\"']*(?:key|token|secret|pass|auth|sig|cred|session)[^=&\s\"']*=)[^&\s\"']*",
                      re.IGNORECASE)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Every URL in ``text`` redacted as :func:`redact_url` does, and any key-like token elsewhere."""
    secrets = tuple(secrets)
    text = _URL.sub(lambda m: m.group(1) + redact_url(m.group(2), secrets), text)
    text = _IN_TEXT.sub(lambda m: m.group(1) + REDACTED, text)
    return _scrub(text, secrets)


class RedactKeysFilter(logging.Filter):
    """A log filter that redacts credentials in a record's message and arguments (uvicorn's access
    log passes the path with its query; httpx's and aiohttp's request logs pass the URL).
    ``secrets``: strings redacted wherever they appear (the server's own API key)."""

    def __init__(self, name: str = "", secrets: Iterable[str] = ()):
        super().__init__(name)
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._redact(a) for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact_text(record.msg, self.secrets)
        return True

    def _redact(self, arg):
        """An argument redacted as text (a URL object too: httpx logs ``request.url``); one with
        nothing to redact is left as it was, so ``%d`` still formats a number."""
        if isinstance(arg, (int, float)) or arg is None:
            return arg
        text = str(arg)
        out = redact_url(text, self.secrets) if text.startswith("/") else redact_text(text, self.secrets)
        return arg if out == text else out


def redact_logger(name: str, secrets: Iterable[str] = ()) -> None:
    """Put :class:`RedactKeysFilter` on the logger ``name`` (once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactKeysFilter) for f in logger.filters):
        logger.addFilter(RedactKeysFilter(secrets=secrets))


def uvicorn_log_config(secrets: Iterable[str] = ()) -> dict:
    """uvicorn's default logging configuration with :class:`RedactKeysFilter` on its access and
    error logs (``secrets``: the server's own key, redacted wherever it appears)."""
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg.setdefault("filters", {})["redact_keys"] = {"()": f"{__name__}.RedactKeysFilter",
                                                    "secrets": [s for s in secrets if s]}
    for name in ("uvicorn.access", "uvicorn.error"):
        cfg["loggers"].setdefault(name, {})["filters"] = ["redact_keys"]
    return cfg
