"""The guard's event-stream parser against the WHATWG rules (the examples of the HTML standard's
server-sent events section, and the edge cases it spells out), fed whole and byte by byte."""

from __future__ import annotations

import pytest

from logitleak.guard.sse import Event, EventStreamParser, format_event


def parse(raw: bytes, step: int | None = None) -> list[Event]:
    p = EventStreamParser()
    chunks = [raw] if step is None else [raw[i:i + step] for i in range(0, len(raw), step)]
    out = [e for c in chunks for e in p.feed(c)]
    return out + p.close()


@pytest.mark.parametrize("step", [None, 1, 3])
@pytest.mark.parametrize("raw, events", [
    # the standard's examples: multi-line data joined with LF; a comment; an id line; no space after the colon
    (b"data: YHOO\ndata: +2\ndata: 10\n\n", [Event("YHOO\n+2\n10")]),
    (b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
     [Event("first event"), Event("second event"), Event(" third event")]),
    (b"data\n\ndata\ndata\n\ndata:", [Event(""), Event("\n")]),  # the last event never finished: discarded
    (b"data:test\n\ndata: test\n\n", [Event("test"), Event("test")]),
    # every line ending, a BOM at the start only, event types, unknown fields and retry dropped
    (b"\xef\xbb\xbfdata: a\r\n\r\ndata: b\r\rdata: c\n\n", [Event("a"), Event("b"), Event("c")]),
    (b"event: add\ndata: 1\n\nevent:\ndata: 2\n\n", [Event("1", "add"), Event("2")]),
    (b"retry: 10\nfoo: bar\nid: 7\n\n", []),  # no data: nothing dispatched
    (b"event: x\n\ndata: y\n\n", [Event("y")]),  # an event type without data does not carry over
    (b"data: a\r", []),  # a CR held back at the very end still ends its line, but no blank line follows
    (b"data: a\r\r", [Event("a")]),
    (b"data: \xff\xfe\n\n", [Event("\ufffd\ufffd")]),  # invalid UTF-8 replaced, never raised
])
def test_events_follow_the_whatwg_rules(raw, events, step):
    assert parse(raw, step) == events


def test_a_second_bom_is_data_and_split_multibyte_characters_survive():
    assert parse(b"\xef\xbb\xbfdata: \xef\xbb\xbfx\n\n") == [Event("\ufeffx")]
    assert parse("data: ∂é\n\n".encode(), step=1) == [Event("∂é")]


def test_format_event_round_trips():
    for ev in (Event("a\nb"), Event('{"x": 1}', "response.created"), Event("")):
        assert parse(format_event(ev.data, ev.event)) == [ev]
