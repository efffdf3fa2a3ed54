"""Wall-clock time per named phase of a command (load, capture, probes, ...), for run.json."""

from __future__ import annotations

import time


class Timer:
    """``with timer("capture"): ...`` adds the block's seconds to ``timer.timings["capture"]``."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.timings[name] = round(timer.timings.get(name, 0.0) + time.perf_counter() - self.t0, 3)

        return _Ctx()
