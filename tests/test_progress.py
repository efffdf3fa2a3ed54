"""Progress in a log: lines with count, total and rate, at least every interval, while a step runs."""

from __future__ import annotations

import io
import re
import time

from logitleak.progress import LogProgress, make_progress


def test_log_progress_prints_count_total_and_rate_while_a_long_step_runs():
    out = io.StringIO()
    with LogProgress(out, interval=0.3) as prog:
        task = prog.add_task("probing", total=10)
        prog.update(task, description="linear 'residual' layer 3")
        prog.advance(task, 4)
        time.sleep(1.6)                        # one long step: the timer still reports
    lines = out.getvalue().splitlines()
    ticks = [ln for ln in lines if "residual" in ln]
    assert len(ticks) >= 3
    assert re.match(r"\[probing\] 4/10 \(\d+\.\d/s, \d+ s\) linear 'residual' layer 3", ticks[0])
    assert lines[-1].startswith("[probing] 4/10") and lines[-1].endswith("done")


def test_make_progress_writes_lines_when_not_a_terminal_and_nothing_when_disabled():
    assert isinstance(make_progress(True, io.StringIO()), LogProgress)
    quiet = make_progress(False, io.StringIO())
    with quiet as q:
        q.advance(q.add_task("x", total=1))
