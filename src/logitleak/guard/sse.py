"""Server-sent events read per the WHATWG event-stream rules, and written back from what was read.

:class:`EventStreamParser` is fed the stream's bytes as they come and returns the events
completed so far: UTF-8 decoded (a leading BOM dropped, invalid bytes replaced), lines ended by
CR, LF or CRLF, ``data:`` lines of one event joined with LF, comments and unknown fields
dropped, an event dispatched at a blank line only when it has data, and an unfinished event at
the end of the stream discarded. :func:`format_event` writes an event as ``event:`` and ``data:``
lines; ``id`` and ``retry`` are not carried (no OpenAI-compatible client reconnects with them).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    """One dispatched event: its ``data`` (lines joined with LF) and ``event`` type (``None``: message)."""

    data: str
    event: str | None = None


class EventStreamParser:
    """Incremental WHATWG event-stream parser: ``feed(bytes) -> [Event]``, ``close()`` at the end."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self._buffer = ""
        self._data: list[str] = []
        self._event: str | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        return self._lines(self._decoder.decode(chunk))

    def close(self) -> list[Event]:
        """The end of the stream: a CR held back for a possible LF ends its line; an event not
        closed by a blank line is discarded."""
        events = self._lines(self._decoder.decode(b"", final=True))
        if self._buffer.endswith("\r"):
            events += self._line(self._buffer[:-1])
        self._buffer, self._data, self._event = "", [], None
        return events

    def _lines(self, text: str) -> list[Event]:
        buf = self._buffer + text
        events: list[Event] = []
        start, n = 0, len(buf)
        while True:
            cr, lf = buf.find("\r", start), buf.find("\n", start)
            ends = [i for i in (cr, lf) if i >= 0]
            if not ends:
                break
            end = min(ends)
            if buf[end] == "\r":
                if end + 1 == n:  # a CR at the end of what came so far: an LF may follow in the next chunk
                    break
                nxt = end + 2 if buf[end + 1] == "\n" else end + 1
            else:
                nxt = end + 1
            events += self._line(buf[start:end])
            start = nxt
        self._buffer = buf[start:]
        return events

    def _line(self, line: str) -> list[Event]:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return []
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        return []  # id, retry and unknown fields are read and dropped

    def _dispatch(self) -> list[Event]:
        data, event = self._data, self._event
        self._data, self._event = [], None
        if not data:
            return []
        return [Event("\n".join(data), event or None)]


def format_event(data: str | bytes, event: str | None = None) -> bytes:
    """An event on the wire: ``event: <type>`` when it has one, a ``data:`` line per line of data."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    head = f"event: {event}\n" if event else ""
    return (head + "".join(f"data: {line}\n" for line in text.split("\n")) + "\n").encode("utf-8")
