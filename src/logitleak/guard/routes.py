"""Which routes the guard relays unread: the owner's ``--passthrough`` list, checked once."""

from __future__ import annotations

import re
from collections.abc import Iterable

from logitleak.errors import LogitleakError

GENERATION_ROUTES = ("/chat/completions", "/completions", "/responses", "/completion")


def check_passthrough(routes: Iterable[str]) -> frozenset[str]:
    """``--passthrough`` paths as the guard's clients write them (``/metrics``, ``/v1/tokenize``),
    refused when they are not plain paths or name a route that generates text."""
    out = set()
    for route in routes:
        if not re.fullmatch(r"(/[A-Za-z0-9_.\-]+)+/?", route) or re.search(r"/\.\.?(/|$)", route):
            raise LogitleakError(f"--passthrough {route!r} is not a plain path; give the exact path a client "
                                 "requests, e.g. /metrics or /v1/tokenize.")
        if route.rstrip("/").lower().endswith(GENERATION_ROUTES):
            raise LogitleakError(f"--passthrough {route!r} names a route that returns log-probabilities; the guard "
                                 "always defends it.")
        out.add(route)
    return frozenset(out)
