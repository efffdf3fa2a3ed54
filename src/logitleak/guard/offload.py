"""Defence off the event loop: a large body is defended in a worker process, a small one inline.

Parsing and writing JSON hold the interpreter lock for as long as they run, so a thread would
still stall every other request behind a 50 MB body; a process does not. The pool starts on
the first large body (``spawn``: no copy of the server's event loop or sockets) and is shut
down with the app.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from logitleak.guard.defender import ResponseDefender
from logitleak.guard.document import defend_json

INLINE_BYTES = 256 * 1024  # below this a body is defended on the event loop (well under a millisecond per KB)


class Offload:
    """Runs :func:`~logitleak.guard.document.defend_json` inline for small bodies and in a process
    pool of ``workers`` for bodies over ``inline_bytes``."""

    def __init__(self, defender: ResponseDefender, *, inline_bytes: int = INLINE_BYTES, workers: int | None = None):
        self.defender, self.inline_bytes = defender, inline_bytes
        self.workers = workers or max(1, min(2, os.cpu_count() or 1))
        self._pool: ProcessPoolExecutor | None = None

    async def defend(self, data: bytes | str, request_key: bytes, offsets: dict | None = None) -> tuple[bytes, dict]:
        """The defended bytes of ``data`` and the updated stream offsets (see ``defend_json``)."""
        if len(data) <= self.inline_bytes:
            return defend_json(data, self.defender, request_key, offsets)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, defend_json, data, self.defender, request_key, offsets)
        except BrokenProcessPool:  # a worker died (out of memory, killed): this body fails, the next gets a new pool
            self._pool = None
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
