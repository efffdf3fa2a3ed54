"""Wall-clock and CPU time per named phase of a command (load, capture, probes, ...), for run.json and the log."""

from __future__ import annotations

from contextlib import contextmanager

from logitleak.progress import phase


class Timer:
    """``with timer("capture"): ...`` adds the block's seconds to ``timer.timings["capture"]`` (wall)
    and ``timer.cpu["capture"]`` (CPU of this process and its finished workers). With ``progress``
    the block is also a :func:`~logitleak.progress.phase` of the log: what starts inside prints under it."""

    def __init__(self, progress: bool = False, stream=None) -> None:
        self.timings: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.progress = progress
        self.stream = stream

    @contextmanager
    def __call__(self, name: str):
        with phase(name, self.progress, self.stream) as spent:
            yield
        self.timings[name] = round(self.timings.get(name, 0.0) + spent["wall"], 3)
        self.cpu[name] = round(self.cpu.get(name, 0.0) + spent["cpu"], 3)


def phase_lines(wall: dict[str, float], cpu: dict[str, float] | None = None) -> list[str]:
    """One line per phase, ``capture   20.5 s wall   38.0 s CPU``, then the total."""
    cpu = cpu or {}
    if not wall:
        return []
    width = max(len(n) for n in (*wall, "total"))

    def line(name: str, w: float, c: float | None) -> str:
        return f"{name:<{width}}  {w:8.1f} s wall" + (f"  {c:8.1f} s CPU" if c is not None else "")

    rows = [line(n, w, cpu.get(n)) for n, w in wall.items()]
    total_cpu = sum(cpu.get(n, 0.0) for n in wall) if cpu else None
    return rows + [line("total", sum(wall.values()), total_cpu)]
