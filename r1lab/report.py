"""Plots and a self-contained HTML report for a run folder.

A run folder holds `metrics.jsonl` (one JSON object per logged step), `samples.jsonl`
(logged completions) and `summary.json` (per-stage evaluation results). Any of them may
be missing or still being written, so every reader here skips what it cannot parse; a
`summary.json` that is there but corrupted is said so (``summary_problem``), and a folder
that is no run at all is refused (``check_run_folder``).

Rewards that failed are reported per RL stage (``reward_error_totals``, from the
`reward/<name>_errors` count each step logs), so a reward that silently scored 0 shows.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

# Drawing through a Figure bound to the Agg canvas (never pyplot) needs no display and
# leaves the process-wide matplotlib backend alone.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from r1lab.checkpoint import atomic_write_json
from r1lab.config import ConfigError
from r1lab.models import RUN_FILES, STAGE_FILES

TRAINING_CURVES_FILE = "training_curves.png"
DIAGNOSTICS_FILE = "training_diagnostics.png"
REASONING_FILE = "reasoning_curves.png"
REPORT_FILE = "report.html"

REWARD_COMPONENTS = [
    # (key, legend label, line style)
    ("reward/mean", "reward", "-"),
    ("reward/accuracy", "accuracy", "--"),
    ("reward/format", "format", ":"),
]
HELD_OUT_ACCURACY = "eval/pass@1"
TRAINING_LENGTH = "completion/length_mean"
EVAL_LENGTH = "eval/length_mean"
DIAGNOSTIC_METRICS = [
    ("kl", "KL to reference"),
    ("clip_frac", "clip fraction"),
    ("entropy", "entropy"),
    ("groups/zero_spread_frac", "share of groups with equal rewards"),
    ("step_seconds", "seconds per step"),
]
LENGTH_PERCENTILES = [("completion/length_p10", "p10", ":"), ("completion/length_p50", "p50", "-"),
                      ("completion/length_p90", "p90", "--")]
CHECK_COUNTS = [("checks/per_completion", "checks", "-"), ("checks/revisions_per_completion", "revisions", "--")]
ACCURACY_BY_CHECKS = [(f"accuracy/by_checks/{n}", f"{n} checks", style)
                      for n, style in [("0", ":"), ("1", "-."), ("2", "--"), ("3+", "-")]]
SAMPLES_PER_STEP_SHOWN = 8

Series = tuple[list[float], list[float]]  # (steps, values), sorted by step


# --- reading run files ---


def _read_jsonl(path: Path) -> Iterator[dict]:
    """JSON objects from a JSON-lines file; unreadable lines (a half-written last line) are skipped."""
    if not path.is_file():
        return
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield record


def _is_plottable_number(value) -> bool:
    # bool is an int subclass but a flag, not a measurement.
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Rows of metrics.jsonl holding "stage", "step" and only the finite numeric values."""
    rows = []
    for record in _read_jsonl(Path(run_dir) / "metrics.jsonl"):
        if not _is_plottable_number(record.get("step")):
            continue
        row = {"stage": str(record.get("stage", "run")), "step": record["step"]}
        for key, value in record.items():
            if key not in ("stage", "step") and _is_plottable_number(value):
                row[key] = float(value)
        rows.append(row)
    return rows


def read_summary(run_dir: str | Path) -> dict | None:
    """summary.json, or None when it is missing or not valid JSON (``summary_problem`` says which)."""
    path = Path(run_dir) / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def summary_problem(run_dir: str | Path) -> str | None:
    """Why a run's summary.json that exists cannot be read (not UTF-8, not JSON, not an object), None when it is
    missing (a run still in its first stage) or fine."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        what = f"cannot be read ({error.strerror})"
    except UnicodeDecodeError:
        what = "is corrupted (not UTF-8 text)"
    except json.JSONDecodeError as error:
        what = f"is corrupted (not valid JSON: {error.msg} at line {error.lineno} column {error.colno})"
    else:
        if isinstance(summary, dict):
            return None
        what = f"is corrupted (a JSON {type(summary).__name__}, not an object)"
    return (f"{path} {what}, so the report has no evaluation table; running `r1lab run` on the recipe again rewrites "
            f"it (the stages already done are skipped)")


class NotARunError(ConfigError):
    """A folder given as a run holds no run; the message says which folder to give instead."""


def is_run_folder(folder: str | Path) -> bool:
    """A folder `r1lab run` wrote: it has summary.json, config.yaml or metrics.jsonl."""
    return any((Path(folder) / name).exists() for name in RUN_FILES)


def check_run_folder(folder: str | Path) -> None:
    """``NotARunError`` unless ``folder`` is a run folder, saying what it is (missing, a stage folder, a folder of
    runs) and which folder to give instead."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotARunError(f"no run folder at {folder}")
    if is_run_folder(folder):
        return
    expected = f"a run folder has {', '.join(RUN_FILES)}, which `r1lab run` writes"
    if any((folder / name).exists() for name in STAGE_FILES) and is_run_folder(folder.parent):
        raise NotARunError(f"{folder} is a stage folder of the run {folder.parent}, not a run; give the run: "
                           f"r1lab report {folder.parent}")
    runs = sorted(str(child) for child in folder.iterdir() if child.is_dir() and is_run_folder(child))
    if runs:
        shown = ", ".join(runs[:5]) + (", ..." if len(runs) > 5 else "")
        raise NotARunError(f"{folder} is not a run but holds runs: {shown}; give one of them, or several for one "
                           f"report over them")
    raise NotARunError(f"{folder} is not a run folder ({expected}); give the folder of a run, e.g. runs/<name>")


def stages_in_order(rows: list[dict]) -> list[str]:
    """Stage names in the order they first appear in the log."""
    return list(dict.fromkeys(row["stage"] for row in rows))


def metric_series(rows: list[dict], key: str) -> dict[str, Series]:
    """Per stage, the (step, value) pairs of one metric, sorted by step."""
    pairs_by_stage: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if key in row:
            pairs_by_stage.setdefault(row["stage"], []).append((row["step"], row[key]))
    series = {}
    for stage, pairs in pairs_by_stage.items():
        pairs.sort(key=lambda pair: pair[0])  # stable: a resumed run keeps log order per step
        series[stage] = ([p[0] for p in pairs], [p[1] for p in pairs])
    return series


def moving_average(values: list[float], window: int) -> list[float]:
    """Mean over a window centred on each point (narrower at the ends).

    Centred rather than trailing so the smoothed curve does not lag behind a trend.
    """
    half = max(1, window) // 2
    prefix = [0.0]
    for value in values:
        prefix.append(prefix[-1] + value)
    averaged = []
    for i in range(len(values)):
        start, stop = max(0, i - half), min(len(values), i + half + 1)
        averaged.append((prefix[stop] - prefix[start]) / (stop - start))
    return averaged


def smoothing_window(num_points: int) -> int:
    """About a tenth of the series: visible trend without hiding a late change."""
    return max(1, min(50, num_points // 10))


# --- plotting ---


def _stage_colors(stages: list[str]) -> dict[str, str]:
    return {stage: f"C{i % 10}" for i, stage in enumerate(stages)}


def _label(stage: str, name: str, several_stages: bool) -> str:
    return f"{stage}: {name}" if several_stages else name


def _plot_noisy(ax, steps, values, color, style, label, show_raw: bool) -> None:
    """Smoothed line, with the raw values as a faint line behind it."""
    window = smoothing_window(len(values))
    if show_raw and window > 1:
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
    marker = "o" if len(values) == 1 else None  # a single point draws no line
    ax.plot(steps, moving_average(values, window), color=color, linestyle=style, marker=marker, label=label)


def _finish_axes(ax, title: str, ylabel: str, has_data: bool) -> None:
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if has_data:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _select_stages(rows: list[dict], stage: str | None) -> list[dict]:
    return rows if stage is None else [row for row in rows if row["stage"] == stage]


def plot_training_curves(run_dir: str | Path, stage: str | None = None) -> Path | None:
    """training_curves.png: training reward, held-out pass@1 and completion length per step.

    These are the R1 paper's signature curves: reward and accuracy rising while
    responses grow longer. Each stage gets its own colour; `stage` keeps just one.
    Returns None when there is nothing to plot.
    """
    run_dir = Path(run_dir)
    rows = _select_stages(read_metrics(run_dir), stage)
    stages = stages_in_order(rows)
    several = len(stages) > 1
    colors = _stage_colors(stages)

    reward_series = {key: metric_series(rows, key) for key, _, _ in REWARD_COMPONENTS}
    accuracy_series = metric_series(rows, HELD_OUT_ACCURACY)
    length_series = metric_series(rows, TRAINING_LENGTH)
    eval_length_series = metric_series(rows, EVAL_LENGTH)
    if not (any(reward_series.values()) or accuracy_series or length_series or eval_length_series):
        return None

    figure = _new_figure(15, 4.2)
    reward_ax, accuracy_ax, length_ax = figure.subplots(1, 3)

    for key, name, style in REWARD_COMPONENTS:
        for stage_name, (steps, values) in reward_series[key].items():
            _plot_noisy(reward_ax, steps, values, colors[stage_name], style,
                        _label(stage_name, name, several), show_raw=key == "reward/mean")
    _finish_axes(reward_ax, "Training reward", "reward", any(reward_series.values()))

    for stage_name, (steps, values) in accuracy_series.items():
        accuracy_ax.plot(steps, values, color=colors[stage_name], marker="o", markersize=4,
                         label=_label(stage_name, "pass@1", several))
    _finish_axes(accuracy_ax, "Held-out accuracy", "pass@1", bool(accuracy_series))

    for stage_name in stages:
        if stage_name in length_series:
            steps, values = length_series[stage_name]
            _plot_noisy(length_ax, steps, values, colors[stage_name], "-",
                        _label(stage_name, "training", several), show_raw=True)
        elif stage_name in eval_length_series:
            # Stages that log no training length (e.g. evaluation only) still show a trend.
            steps, values = eval_length_series[stage_name]
            length_ax.plot(steps, values, color=colors[stage_name], marker="o", markersize=4,
                           linestyle="--", label=_label(stage_name, "held-out", several))
    _finish_axes(length_ax, "Mean completion length", "tokens",
                 bool(length_series or eval_length_series))

    path = run_dir / TRAINING_CURVES_FILE
    figure.savefig(path, dpi=110)
    return path


def plot_extra_metrics(run_dir: str | Path) -> Path | None:
    """training_diagnostics.png: KL, clip fraction, entropy, zero-spread share, step time.

    Only the metrics present in the log get a panel; None when there are none.
    """
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    stages = stages_in_order(rows)
    colors = _stage_colors(stages)
    several = len(stages) > 1
    present = [(key, title, metric_series(rows, key)) for key, title in DIAGNOSTIC_METRICS]
    present = [(key, title, series) for key, title, series in present if series]
    if not present:
        return None

    columns = min(3, len(present))
    rows_of_panels = math.ceil(len(present) / columns)
    figure = _new_figure(5 * columns, 3.8 * rows_of_panels)
    axes = figure.subplots(rows_of_panels, columns, squeeze=False).flatten()
    for ax, (key, title, series) in zip(axes, present):
        for stage_name, (steps, values) in series.items():
            _plot_noisy(ax, steps, values, colors[stage_name], "-",
                        _label(stage_name, key, several), show_raw=True)
        _finish_axes(ax, title, key, True)
    for unused_ax in axes[len(present):]:
        unused_ax.set_visible(False)

    path = run_dir / DIAGNOSTICS_FILE
    figure.savefig(path, dpi=110)
    return path


def plot_reasoning_metrics(run_dir: str | Path) -> Path | None:
    """reasoning_curves.png: how the reasoning changes over training (the "aha moment", DeepSeek-R1 arXiv
    2501.12948 §2.2.4).

    Completion length p10/p50/p90, checks and revisions per completion, and training accuracy by the number of
    checks in a completion. Only the panels with data are drawn (a task without self-checks gets the length panel
    alone); None when the log has none of these metrics.
    """
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    stages = stages_in_order(rows)
    colors = _stage_colors(stages)
    several = len(stages) > 1
    panels = [("Completion length (training)", "tokens", LENGTH_PERCENTILES),
              ("Self-checks per completion", "per completion", CHECK_COUNTS),
              ("Training accuracy by number of checks", "pass rate", ACCURACY_BY_CHECKS)]
    series = {key: metric_series(rows, key) for _, _, keys in panels for key, _, _ in keys}
    panels = [panel for panel in panels if any(series[key] for key, _, _ in panel[2])]
    if not panels:
        return None
    figure = _new_figure(5 * len(panels), 4.2)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, ylabel, keys) in zip(axes, panels):
        has_data = False
        for index, (key, name, style) in enumerate(keys):
            for stage_name, (steps, values) in series[key].items():
                # one colour per stage in the first two panels; one colour per bucket in the accuracy panel
                color = f"C{index}" if keys is ACCURACY_BY_CHECKS else colors[stage_name]
                _plot_noisy(ax, steps, values, color, style, _label(stage_name, name, several), show_raw=False)
                has_data = True
        _finish_axes(ax, title, ylabel, has_data)
    path = run_dir / REASONING_FILE
    figure.savefig(path, dpi=110)
    return path


# --- summary table ---


def _format_rate(value) -> str:
    return f"{value:.4f}" if _is_plottable_number(value) else "—"


def _format_length(value) -> str:
    return f"{value:.1f}" if _is_plottable_number(value) else "—"


def _format_checks(value) -> str:
    return f"{value:.2f}" if _is_plottable_number(value) else "—"


def _format_count(value) -> str:
    return str(int(value)) if _is_plottable_number(value) else "—"


SUMMARY_COLUMNS: list[tuple[str, str | tuple[str, ...], Callable[[object], str]]] = [
    # (header, key in the stage's "eval" dict (or keys, the first one present wins), formatter)
    ("pass@1", "pass@1", _format_rate),
    ("cons@k", "cons@k", _format_rate),
    ("k", "k", _format_count),
    ("format rate", "format_rate", _format_rate),
    ("language consistency", "language_consistency", _format_rate),
    ("mean length", "length_mean", _format_length),
    ("problems", "num_problems", _format_count),
]


# Columns shown only when some stage reports them (tasks with self-checks). The evaluation summary holds the
# task's metrics under their own keys (task.metrics: "checks/per_completion", ...); runs written before that used
# "checks_per_completion" and "ok_precision", still read so that their reports keep these numbers.
OPTIONAL_SUMMARY_COLUMNS: list[tuple[str, str | tuple[str, ...], Callable[[object], str]]] = [
    ("checks per completion", ("checks/per_completion", "checks_per_completion"), _format_checks),
    ('"ok" precision', ("checks/ok_precision", "ok_precision"), _format_rate),
]


def _eval_value(results: dict, key: str | tuple[str, ...]):
    """The value of a column in one stage's evaluation: the first of its keys that is present and not None."""
    for name in (key,) if isinstance(key, str) else key:
        if results.get(name) is not None:
            return results[name]
    return None


def _stage_evals(summary: dict) -> list[tuple[dict, dict]]:
    """(stage entry, its evaluation or {}) for every well-formed stage entry."""
    stages = [stage for stage in summary.get("stages") or [] if isinstance(stage, dict)]
    return [(stage, stage["eval"] if isinstance(stage.get("eval"), dict) else {}) for stage in stages]


def _columns(summary: dict) -> list[tuple[str, str | tuple[str, ...], Callable[[object], str]]]:
    evals = [results for _, results in _stage_evals(summary)]
    return SUMMARY_COLUMNS + [column for column in OPTIONAL_SUMMARY_COLUMNS
                              if any(_eval_value(results, column[1]) is not None for results in evals)]


def summary_rows(summary: dict) -> list[list[str]]:
    """One row of display strings per stage: name, kind, the evaluation columns, then the rows of the data set a
    data stage wrote."""
    columns = _columns(summary)
    rows = []
    for stage, results in _stage_evals(summary):
        row = [str(stage.get("stage", "?")), str(stage.get("kind") or "—")]
        row += [formatter(_eval_value(results, key)) for _, key, formatter in columns]
        data = stage.get("data") if isinstance(stage.get("data"), dict) else {}
        row.append(_format_count(data.get("rows")))
        rows.append(row)
    return rows


def _summary_headers(summary: dict) -> list[str]:
    return ["stage", "kind"] + [header for header, _, _ in _columns(summary)] + ["data rows"]


def summary_table_markdown(summary: dict) -> str:
    """GitHub markdown table with one row per stage of summary.json."""

    def cell(text: str) -> str:
        # A pipe or line break would split the cell.
        return text.replace("|", "\\|").replace("\n", " ")

    headers = _summary_headers(summary)
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(headers) - 2)) + "|",
    ]
    lines += ["| " + " | ".join(cell(text) for text in row) + " |" for row in summary_rows(summary)]
    return "\n".join(lines) + "\n"


def _summary_table_html(summary: dict) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in _summary_headers(summary))
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(text)}</td>" for text in row) + "</tr>"
        for row in summary_rows(summary)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --- reward errors ---


def _reward_errors_by_step(rows: list[dict], stage: str) -> dict[str, dict[float, float]]:
    """Per reward, {step: completions it failed on}; a step logged twice (a resumed run) counts once, last wins."""
    by_reward: dict[str, dict[float, float]] = {}
    for row in rows:
        if row["stage"] != stage:
            continue
        for key, value in row.items():
            if key.startswith("reward/") and key.endswith("_errors"):
                by_reward.setdefault(key[len("reward/"):-len("_errors")], {})[row["step"]] = value
    return by_reward


def reward_error_totals(run_dir: str | Path, stage: str) -> dict[str, int]:
    """Per reward of an RL stage, how many completions it failed on over the whole stage (from metrics.jsonl's
    ``reward/<name>_errors``, a step logged twice by a resumed run counted once); {} for a stage without rewards.
    The pipeline puts it in summary.json as the stage's ``reward_errors``."""
    by_reward = _reward_errors_by_step(read_metrics(run_dir), stage)
    return {name: int(sum(steps.values())) for name, steps in by_reward.items()}


def _reward_errors_html(run_dir: Path) -> str:
    """A table of every RL stage's reward failures (none: a line saying every reward scored every completion)."""
    rows = read_metrics(run_dir)
    lines = []
    for stage in stages_in_order(rows):
        for name, steps in _reward_errors_by_step(rows, stage).items():
            failing = sum(1 for count in steps.values() if count > 0)
            lines.append((stage, name, int(sum(steps.values())), failing, len(steps)))
    if not lines:
        return ""
    if not any(total for _, _, total, _, _ in lines):
        return "<p>Reward errors: none (every reward scored every completion).</p>"
    head = "".join(f"<th>{h}</th>" for h in ("stage", "reward", "failed completions", "steps with failures", "steps"))
    body = "".join(f"<tr><td>{html.escape(stage)}</td><td>{html.escape(name)}</td><td>{total}</td>"
                   f"<td>{failing}</td><td>{steps}</td></tr>" for stage, name, total, failing, steps in lines)
    return (f"<p><b>Reward errors</b> (a failure counts as 0 in the reward; the run's log has each reward's first "
            f"traceback):</p><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


# --- samples ---


def first_and_last_step_samples(run_dir: str | Path, per_step: int = SAMPLES_PER_STEP_SHOWN) -> dict:
    """Per stage (in log order): {"first": (step, samples), "last": (step, samples)}.

    Read in one pass keeping at most `per_step` samples per end, so a long
    samples.jsonl never has to fit in memory.
    """
    ends: dict[str, dict] = {}
    for record in _read_jsonl(Path(run_dir) / "samples.jsonl"):
        step = record.get("step")
        if not _is_plottable_number(step):
            continue
        stage = ends.setdefault(str(record.get("stage", "run")),
                                {"first": (step, []), "last": (step, [])})
        for end, is_further in (("first", step < stage["first"][0]), ("last", step > stage["last"][0])):
            if is_further:
                stage[end] = (step, [])
            end_step, kept = stage[end]
            if step == end_step and len(kept) < per_step:
                kept.append(record)
    return ends


def _format_reward(value) -> str:
    return f"{value:.3f}" if _is_plottable_number(value) else html.escape(str(value))


def _sample_html(record: dict) -> str:
    rewards = record.get("rewards")
    reward_parts = (
        ", ".join(f"{html.escape(str(name))}={_format_reward(v)}" for name, v in rewards.items())
        if isinstance(rewards, dict) else ""
    )
    answer = record.get("answer")
    return (
        '<div class="sample">'
        f'<div class="meta">answer: <code>{html.escape("—" if answer is None else str(answer))}</code>'
        f" · reward: {_format_reward(record.get('reward'))}"
        + (f" · {reward_parts}" if reward_parts else "")
        + "</div>"
        f'<div class="label">prompt</div><pre>{html.escape(str(record.get("prompt", "")))}</pre>'
        f'<div class="label">completion</div><pre>{html.escape(str(record.get("completion", "")))}</pre>'
        "</div>"
    )


def _samples_html(run_dir: Path, level: int = 3) -> str:
    ends = first_and_last_step_samples(run_dir)
    if not ends:
        return "<p>No samples logged yet.</p>"
    parts = []
    for stage, stage_ends in ends.items():
        parts.append(f"<h{level}>{html.escape(stage)}</h{level}>")
        shown = [("first", stage_ends["first"])]
        if stage_ends["last"][0] != stage_ends["first"][0]:
            shown.append(("last", stage_ends["last"]))
        for end, (step, records) in shown:
            parts.append(f"<h{level + 1}>{end} logged step: {html.escape(str(step))}</h{level + 1}>")
            parts += [_sample_html(record) for record in records]
    return "\n".join(parts)


# --- report ---

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:nth-child(-n+2), td:nth-child(-n+2) { text-align: left; }
img { max-width: 100%; }
.sample { border: 1px solid #ddd; border-radius: 4px; padding: 0.5em 0.8em; margin: 0.8em 0; }
.meta { font-size: 0.9em; color: #444; }
.label { font-size: 0.8em; color: #777; margin-top: 0.4em; }
.problem { color: #a00; font-weight: bold; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f6f6; padding: 0.5em; margin: 0.2em 0; }
"""


def _embedded_png(path: Path, alt: str) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _gates_html(summary: dict) -> str:
    """What each check_gate stage measured: are the model's own "ok"/"no" marks right, and does checking pay?"""
    parts = []
    for stage in summary.get("stages") or []:
        gate = stage.get("gate") if isinstance(stage, dict) else None
        if not isinstance(gate, dict):
            continue
        by_checks = gate.get("accuracy_by_checks") if isinstance(gate.get("accuracy_by_checks"), dict) else {}
        accuracy = ", ".join(f"{n} checks {_format_rate(v.get('pass_rate'))} ({_format_count(v.get('count'))})"
                             for n, v in by_checks.items() if isinstance(v, dict))
        verdict = "passed" if gate.get("passed") else "failed: " + "; ".join(map(str, gate.get("failures") or []))
        parts.append(f"<p><b>{html.escape(str(stage.get('stage')))}</b> ({html.escape(verdict)}): "
                     f"\"ok\" marks on real hits {_format_rate(gate.get('ok_precision'))}, "
                     f"\"no\" marks on real misses {_format_rate(gate.get('no_precision'))}, "
                     f"checks per completion {_format_checks(gate.get('checks_per_completion'))}; "
                     f"accuracy by number of checks: {html.escape(accuracy) or '—'}</p>")
    return "\n".join(parts)


def _page(title: str, body: str) -> str:
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
{body}
</body>
</html>
"""


def _run_sections(run_dir: Path, summary: dict | None, level: int) -> str:
    """A run's evaluation table, its plots (rendered now from its metrics) and its sample completions, with
    headings at ``level``; missing run files give a note in place of their section."""
    problem = summary_problem(run_dir)
    if problem:
        table = f'<p class="problem">{html.escape(problem)}</p>'
    elif summary and summary.get("stages"):
        table = _summary_table_html(summary) + _gates_html(summary)
    else:
        table = "<p>No summary yet.</p>"
    table += _reward_errors_html(run_dir)
    plots = [
        (plot_training_curves(run_dir), "training reward, held-out accuracy and completion length"),
        (plot_extra_metrics(run_dir), "training diagnostics"),
        (plot_reasoning_metrics(run_dir), "completion length percentiles, self-checks and accuracy by checks"),
    ]
    images = [_embedded_png(path, alt) for path, alt in plots if path is not None]
    curves = "\n".join(images) if images else "<p>No metrics yet.</p>"
    h = f"h{level}"
    return (f"<{h}>Evaluation</{h}>\n{table}\n<{h}>Training curves</{h}>\n{curves}\n"
            f"<{h}>Sample completions</{h}>\n{_samples_html(run_dir, level + 1)}")


def write_report(run_dir: str | Path) -> Path:
    """report.html: summary table, plots (embedded) and sample completions per stage.

    Self-contained so it can be opened or shared as a single file; missing run files
    give a note in place of their section.
    """
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    run_name = str((summary or {}).get("run") or run_dir.name)
    body = f"<h1>r1lab report: {html.escape(run_name)}</h1>\n{_run_sections(run_dir, summary, level=2)}"
    path = run_dir / REPORT_FILE
    path.write_text(_page(f"r1lab report: {run_name}", body), encoding="utf-8")
    return path


def write_combined_report(run_dirs: list[str | Path], out_dir: str | Path) -> Path:
    """One report over several runs (e.g. the demo: the R1 pipeline and the aha recipe run side by side):
    ``out_dir/report.html`` with a section per run, and ``out_dir/summary.json`` holding each run's summary.

    A run folder that is missing or unfinished still gets its section, saying what is missing.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries, sections, contents = [], [], []
    for run_dir in map(Path, run_dirs):
        summary = read_summary(run_dir)
        name = str((summary or {}).get("run") or run_dir.name)
        problem = summary_problem(run_dir)
        summaries.append(summary or {"run": name, "stages": [], "missing": str(run_dir / "summary.json")}
                         | ({"corrupted": problem} if problem else {}))
        contents.append(f'<li><a href="#run-{html.escape(name)}">{html.escape(name)}</a> '
                        f"({html.escape(str(run_dir))})</li>")
        body = (_run_sections(run_dir, summary, level=3) if run_dir.is_dir()
                else f"<p>No run folder at {html.escape(str(run_dir))}.</p>")
        sections.append(f'<h2 id="run-{html.escape(name)}">{html.escape(name)}</h2>\n{body}')
    title = "r1lab report: " + ", ".join(s["run"] for s in summaries)
    body = f"<h1>{html.escape(title)}</h1>\n<ul>{''.join(contents)}</ul>\n" + "\n".join(sections)
    atomic_write_json(out_dir / "summary.json", {"runs": summaries})
    path = out_dir / REPORT_FILE
    path.write_text(_page(title, body), encoding="utf-8")
    return path
