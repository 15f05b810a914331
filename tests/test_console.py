"""Progress lines: at most every few seconds, with the rate and the time left."""

from r1lab import console as console_module
from r1lab.console import Console, duration


def test_duration_reads_like_a_person_writes_it():
    assert [duration(s) for s in (42, 185, 3720)] == ["42s", "3m 05s", "1h 02m"]


def test_progress_shows_rate_and_time_left_and_is_throttled(capsys, monkeypatch):
    clock = iter([100.0, 101.0, 102.0, 110.0, 120.0])
    monkeypatch.setattr(console_module.time, "time", lambda: next(clock))
    console = Console()
    console.progress("grpo", 10, 100, "reward 0.5")  # resumed at step 10: the pace is measured from here
    console.progress("grpo", 11, 100, "reward 0.5")  # 1 s later: not printed (at most every 5 s)
    console.progress("grpo", 12, 100, "reward 0.5")
    console.progress("grpo", 20, 100, "reward 0.6")  # 10 steps in 10 s: 1 step/s, 80 left
    console.progress("grpo", 100, 100, "reward 0.9")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "[grpo] 10/100 reward 0.5"
    assert lines[1] == "[grpo] 20/100 reward 0.6  [1.00 steps/s, 1m 20s left]"
    assert lines[2].endswith("done]") and len(lines) == 3


def test_long_lines_are_not_wrapped_in_a_log(capsys):
    Console().print("x" * 200)
    assert capsys.readouterr().err == "x" * 200 + "\n"


def test_progress_names_its_unit(capsys, monkeypatch):
    clock = iter([100.0, 110.0])
    monkeypatch.setattr(console_module.time, "time", lambda: next(clock))
    console = Console()
    console.progress("rs eval", 0, 400, "samples", unit="sample")
    console.progress("rs eval", 200, 400, "samples", unit="sample")
    assert capsys.readouterr().err.splitlines()[-1] == "[rs eval] 200/400 samples  [20.00 samples/s, 10s left]"


def test_on_a_terminal_each_loop_is_a_live_bar_that_leaves_its_last_line(monkeypatch):
    import io

    from rich.console import Console as RichConsole

    clock = iter([100.0, 101.0, 102.0, 103.0, 104.0, 105.0])
    monkeypatch.setattr(console_module.time, "time", lambda: next(clock))
    console = Console(live=True)
    screen = io.StringIO()
    console.console = RichConsole(file=screen, force_terminal=True, width=120, highlight=False)
    console.progress("grpo", 0, 4, "reward 0.1")
    console.progress("grpo eval", 0, 10, "samples", unit="sample")  # two loops at once: two bars
    assert len(console._bars.tasks) == 2
    console.progress("grpo", 2, 4, "reward 0.4")  # every call updates the bar, none is skipped
    console._bars.refresh()  # drawn now, not when rich's refresh thread next wakes
    bar = next(task for task in console._bars.tasks if task.fields["stage"] == "grpo")
    assert bar.completed == 2 and bar.fields["text"] == "reward 0.4" and bar.fields["pace"] == "[1.00 steps/s, 2s left]"
    console.print("a warning")  # printed above the bars
    console.progress("grpo eval", 10, 10, "samples", unit="sample")
    assert len(console._bars.tasks) == 1
    console.progress("grpo", 4, 4, "reward 0.9")  # the last loop ends: the bars go, the lines stay
    assert console._bars is None
    shown = screen.getvalue()
    assert "a warning" in shown and "[grpo eval] 10/10 samples  [" in shown
    assert "[grpo] 4/4 reward 0.9  [1.00 steps/s, done]" in shown and "━" in shown  # rich's bar


def test_quiet_shows_no_bar():
    console = Console(quiet=True, live=True)
    console.progress("grpo", 1, 4, "reward 0.1")
    assert console._bars is None
