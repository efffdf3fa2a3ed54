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


def _after_done(lines: list[str], name: str) -> list[str]:
    """The lines about ``name`` printed after its done line."""
    tag = f"[{name}]"
    done = [i for i, ln in enumerate(lines) if ln.strip().startswith(tag) and ln.rstrip().endswith("done")]
    assert len(done) == 1, (name, lines)
    return [ln for ln in lines[done[0] + 1:] if ln.strip().startswith(tag)]


def test_a_finished_step_prints_done_once_and_falls_silent_while_others_run():
    out = io.StringIO()
    with LogProgress(out, interval=0.2) as prog:
        images = prog.add_task("training images", total=1)
        prog.advance(images)                       # finished: its done line now, then nothing
        train = prog.add_task("question answering", total=3)
        for _ in range(3):
            time.sleep(0.5)                        # the timer ticks several times meanwhile
            prog.update(train, advance=1, description="question answering (loss 0.1)")
        prog.add_task("report", total=None)        # no total: done when the progress closes
        time.sleep(0.5)
    lines = out.getvalue().splitlines()
    assert _after_done(lines, "training images") == []
    assert _after_done(lines, "question answering") == []
    assert lines[-1].startswith("[report] 0 (") and lines[-1].endswith("done")
    assert sum("[question answering]" in ln for ln in lines) >= 3   # it did report while it ran
    assert sum(ln.endswith("done") for ln in lines) == 3


def test_nested_phases_print_under_their_parent_with_wall_and_cpu_time():
    from logitleak.progress import cpu_seconds, phase

    out = io.StringIO()
    with phase("capture", stream=out) as outer:
        with LogProgress(out, interval=60) as prog:
            prog.advance(prog.add_task("extract", total=2), 2)
        with phase("lens", stream=out) as inner:
            c0 = cpu_seconds()
            while cpu_seconds() - c0 < 0.05:       # some CPU time
                sum(i * i for i in range(10_000))
    lines = out.getvalue().splitlines()
    assert lines[0] == "[capture]"
    assert lines[1].startswith("  [extract] 0/2") and lines[2].startswith("  [extract] 2/2") and lines[2].endswith("done")
    assert lines[3] == "  [lens]"
    assert re.fullmatch(r"  \[lens\] done in \d+\.\d s \(CPU \d+\.\d s\)", lines[4])
    assert re.fullmatch(r"\[capture\] done in \d+\.\d s \(CPU \d+\.\d s\)", lines[5]) and len(lines) == 6
    assert 0 < inner["cpu"] <= outer["cpu"] + 1e-6 and inner["wall"] <= outer["wall"]


def test_a_phase_that_raises_says_it_stopped_and_the_timer_sums_repeated_phases():
    from logitleak.progress import phase
    from logitleak.timing import Timer, phase_lines

    out = io.StringIO()
    try:
        with phase("probes", stream=out):
            raise ValueError("boom")
    except ValueError:
        pass
    assert out.getvalue().splitlines()[-1].startswith("[probes] stopped after ")
    timer = Timer()                                # no progress: silent, still timed
    for _ in range(2):
        with timer("capture"):
            time.sleep(0.05)
    assert timer.timings["capture"] >= 0.1 and set(timer.cpu) == {"capture"}
    lines = phase_lines({"load": 1.25, "capture": 20.5}, {"load": 2.0, "capture": 38.0})
    assert [ln.split() for ln in lines] == [["load", "1.2", "s", "wall", "2.0", "s", "CPU"],
                                            ["capture", "20.5", "s", "wall", "38.0", "s", "CPU"],
                                            ["total", "21.8", "s", "wall", "40.0", "s", "CPU"]]
    assert len({ln.index(" s wall") for ln in lines}) == 1              # the columns line up
