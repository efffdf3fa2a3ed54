"""The guard under load: a large body is defended in a worker process (the same result as inline)
while a small request beside it is answered; 32 concurrent streams each come back defended;
clients that go away mid-stream leave no connection behind; oversized client bodies get a 413.
Timings live in ``benchmarks/bench_guard_big.py``; here each is asserted only as answered."""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from guard_upstreams import DIGITS, MARKER, canned, chat, entry, guard, sse  # noqa: F401 - fixtures

from logitleak.defenses.spec import parse_single_defense
from logitleak.guard.defender import ResponseDefender
from logitleak.guard.document import defend_json

GUARD = {"spec": "gauss:0.5", "inline_bytes": 64 * 1024, "workers": 1}


def big_body(entries: int) -> bytes:
    alts = tuple((f"t{j}", MARKER - j) for j in range(20))
    return json.dumps(chat(*[entry(MARKER, "t0", alts) for _ in range(entries)])).encode()


def test_a_large_body_is_defended_off_the_loop_as_inline_and_a_small_request_beside_it_is_answered(guard, canned):
    big = big_body(3000)  # about 3 MB: over the 64 KB inline limit, so a worker process defends it
    canned.cases["big"] = (200, "application/json", big)
    canned.cases["small"] = (200, "application/json", json.dumps(chat()).encode())
    result = {}

    def fetch_big():
        result["big"] = httpx.post(guard.url + "/chat/completions", content=b"{}", headers={"x-case": "big"},
                                   timeout=300)

    th = threading.Thread(target=fetch_big)
    th.start()
    time.sleep(0.2)
    small = httpx.post(guard.url + "/chat/completions", content=b"{}", headers={"x-case": "small"}, timeout=300)
    th.join(300)
    assert small.status_code == 200 and DIGITS not in small.content  # answered beside it
    r = result["big"]
    assert r.status_code == 200 and DIGITS not in r.content
    inline, _ = defend_json(big, ResponseDefender(parse_single_defense("gauss:0.5"), secret=1), b"{}")
    assert json.loads(r.content) == json.loads(inline)  # the worker's defence is the inline one, noise included


def test_32_concurrent_streams_each_come_back_defended(guard, canned):
    for i in range(32):
        canned.cases[f"s{i}"] = (200, "text/event-stream",
                                 [sse(chat(entry(MARKER - i, f"w{i}"))), 0.05, sse(chat(entry(MARKER, f"v{i}")), "[DONE]")])

    def one(i):
        r = httpx.post(guard.url + "/chat/completions", content=json.dumps({"i": i}).encode(),
                       headers={"x-case": f"s{i}"}, timeout=120)
        return i, r

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(32)))
    for i, r in results:
        assert r.status_code == 200 and DIGITS not in r.content
        datas = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        assert datas[-1] == "[DONE]" and len(datas) == 3
        tokens = [json.loads(d)["choices"][0]["logprobs"]["content"][0]["token"] for d in datas[:2]]
        assert tokens == [f"w{i}", f"v{i}"]  # each client its own stream, nothing crossed


def open_sockets() -> int:
    return sum(os.readlink(f"/proc/self/fd/{fd}").startswith("socket:") for fd in os.listdir("/proc/self/fd")
               if os.path.exists(f"/proc/self/fd/{fd}"))


def test_clients_that_go_away_mid_stream_leave_no_connection_behind(guard, canned):
    canned.cases["slow"] = (200, "text/event-stream", [sse(chat())] + [0.1, sse(chat())] * 20)
    with httpx.Client(timeout=30) as c, c.stream("POST", guard.url + "/chat/completions", content=b"{}",
                                                  headers={"x-case": "slow"}) as r:
        next(r.iter_lines())
    time.sleep(1.0)
    before = open_sockets()
    for _ in range(8):
        with httpx.Client(timeout=30) as c, c.stream("POST", guard.url + "/chat/completions", content=b"{}",
                                                      headers={"x-case": "slow"}) as r:
            assert DIGITS not in next(r.iter_bytes())
    deadline = time.monotonic() + 10
    while open_sockets() > before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert open_sockets() <= before  # each upstream connection was closed with its client's


def test_a_client_body_over_32_mb_gets_a_413(guard):
    r = httpx.post(guard.url + "/chat/completions", content=b"x" * (33 * 2**20), timeout=120)
    assert r.status_code == 413 and "request_too_large" in r.text


def test_a_worker_that_dies_fails_its_body_closed_and_the_next_gets_a_new_pool():
    import asyncio
    import signal

    from logitleak.guard.offload import Offload

    off = Offload(ResponseDefender(parse_single_defense("round:1"), secret=1), inline_bytes=10, workers=1)
    body = big_body(20)

    async def run():
        first, _ = await off.defend(body, b"{}")
        for pid in list(off._pool._processes):
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.5)
        with pytest.raises(Exception) as err:
            await off.defend(body, b"{}")
        again, _ = await off.defend(body, b"{}")
        return first, again, err.value

    try:
        first, again, err = asyncio.run(run())
    finally:
        off.close()
    assert type(err).__name__ == "BrokenProcessPool" and first == again and DIGITS not in again
