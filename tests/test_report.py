"""Plots and the HTML report built from synthetic run folders."""

import html
import json
import random

import pytest

from r1lab.report import (
    NotARunError,
    check_run_folder,
    first_and_last_step_samples,
    moving_average,
    plot_extra_metrics,
    plot_training_curves,
    read_metrics,
    reward_error_totals,
    summary_problem,
    summary_table_markdown,
    write_combined_report,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

SUMMARY = {
    "run": "tiny-r1",
    "stages": [
        {"stage": "sft", "kind": "sft", "checkpoint": "ckpt/sft", "eval": {
            "pass@1": 0.125, "cons@k": 0.25, "k": 8, "format_rate": 0.875,
            "length_mean": 41.25, "num_problems": 64}},
        {"stage": "grpo", "kind": "grpo", "checkpoint": None, "eval": {
            "pass@1": 0.40625, "cons@k": 0.5, "k": 8, "format_rate": 0.99,
            "length_mean": 120.5, "num_problems": 64, "truncated_rate": 0.0, "language_consistency": 0.75}},
        {"stage": "distill", "kind": "distill", "checkpoint": None, "eval": None},
        {"stage": "rs", "kind": "rejection_sampling", "checkpoint": "rs/data.jsonl", "eval": None,
         "data": {"rows": 300, "kept": 290}},
    ],
}


def _write_jsonl(path, records, truncated_tail=None):
    text = "".join(json.dumps(r) + "\n" for r in records)
    if truncated_tail is not None:
        text += truncated_tail
    path.write_text(text, encoding="utf-8")


def _synthetic_metrics(stages=("grpo",), steps=60):
    rng = random.Random(0)
    records = []
    for stage in stages:
        for step in range(steps):
            progress = step / steps
            records.append({
                "stage": stage, "step": step,
                "reward/mean": progress + rng.uniform(-0.2, 0.2),
                "reward/std": 0.3,
                "reward/accuracy": progress * 0.9 + rng.uniform(-0.1, 0.1),
                "reward/format": min(1.0, 0.5 + progress),
                "kl": 0.01 * step, "clip_frac": 0.02, "entropy": 1.5 - progress,
                "completion/length_mean": 50 + 100 * progress + rng.uniform(-10, 10),
                "groups/zero_spread_frac": 0.5 - 0.3 * progress,
                "step_seconds": 1.2,
                "note": "text is ignored", "flag": True,
            })
            if step % 10 == 0:
                records.append({"stage": stage, "step": step, "eval/pass@1": progress,
                                "eval/cons@k": progress, "eval/format_rate": 1.0,
                                "eval/length_mean": 60 + step})
    return records


def _assert_png(path, min_bytes=10_000):
    assert path is not None and path.is_file()
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > min_bytes


def test_moving_average_is_centred_and_keeps_length():
    assert moving_average([1, 2, 3, 4, 5], 3) == [1.5, 2, 3, 4, 4.5]
    assert moving_average([0, 0, 9, 0, 0], 5) == [3, 2.25, 1.8, 2.25, 3]
    assert moving_average([5, 7], 1) == [5, 7]
    assert moving_average([], 3) == []


def test_read_metrics_keeps_only_finite_numbers_and_skips_broken_lines(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"stage": "grpo", "step": 1, "kl": 0.5, "note": "x", "flag": true, "bad": NaN}\n'
        "not json\n"
        '{"stage": "grpo", "kl": 0.1}\n'  # no step: cannot be placed on the x axis
        '{"stage": "grpo", "step": 2, "kl": 0.',  # half-written last line
        encoding="utf-8",
    )
    assert read_metrics(tmp_path) == [{"stage": "grpo", "step": 1, "kl": 0.5}]


def test_training_curves_png(tmp_path):
    _write_jsonl(tmp_path / "metrics.jsonl", _synthetic_metrics())
    path = plot_training_curves(tmp_path)
    assert path == tmp_path / "training_curves.png"
    _assert_png(path)


def test_training_curves_tolerate_truncated_last_line(tmp_path):
    _write_jsonl(tmp_path / "metrics.jsonl", _synthetic_metrics(),
                 truncated_tail='{"stage": "grpo", "step": 60, "reward/me')
    _assert_png(plot_training_curves(tmp_path))


def test_training_curves_several_stages_and_one_chosen(tmp_path):
    _write_jsonl(tmp_path / "metrics.jsonl", _synthetic_metrics(stages=("zero", "grpo")))
    _assert_png(plot_training_curves(tmp_path))
    _assert_png(plot_training_curves(tmp_path, stage="zero"))
    assert plot_training_curves(tmp_path, stage="no-such-stage") is None


def test_training_curves_with_only_eval_lines(tmp_path):
    _write_jsonl(tmp_path / "metrics.jsonl",
                 [{"stage": "base", "step": 0, "eval/pass@1": 0.1, "eval/length_mean": 30.0}])
    _assert_png(plot_training_curves(tmp_path), min_bytes=5_000)


def test_empty_run_gives_no_plots(tmp_path):
    assert plot_training_curves(tmp_path) is None
    assert plot_extra_metrics(tmp_path) is None
    (tmp_path / "metrics.jsonl").write_text("", encoding="utf-8")
    assert plot_training_curves(tmp_path) is None
    assert plot_extra_metrics(tmp_path) is None
    assert not (tmp_path / "training_curves.png").exists()


def test_unknown_keys_only_gives_no_plots(tmp_path):
    _write_jsonl(tmp_path / "metrics.jsonl", [{"stage": "sft", "step": 1, "loss": 2.0}])
    assert plot_training_curves(tmp_path) is None
    assert plot_extra_metrics(tmp_path) is None


def test_diagnostics_png(tmp_path):
    _write_jsonl(tmp_path / "metrics.jsonl", _synthetic_metrics(stages=("zero", "grpo")))
    path = plot_extra_metrics(tmp_path)
    assert path == tmp_path / "training_diagnostics.png"
    _assert_png(path)


def test_diagnostics_with_a_single_metric(tmp_path):
    _write_jsonl(tmp_path / "metrics.jsonl",
                 [{"stage": "grpo", "step": s, "kl": 0.1 * s} for s in range(5)])
    _assert_png(plot_extra_metrics(tmp_path), min_bytes=5_000)


def _sample(stage, step, index, completion=None):
    return {"stage": stage, "step": step, "prompt": f"Q{index}: 2+2? <user>",
            "completion": completion or f"<think>step {step} sample {index}</think> 4",
            "answer": "4", "reward": 1.0, "rewards": {"accuracy": 1.0, "format": 0.5}}


def test_first_and_last_step_samples(tmp_path):
    records = [_sample("grpo", step, i) for step in (0, 5, 10) for i in range(10)]
    records += [_sample("sft", 3, i) for i in range(2)]
    _write_jsonl(tmp_path / "samples.jsonl", records)
    ends = first_and_last_step_samples(tmp_path)
    assert list(ends) == ["grpo", "sft"]
    first_step, first = ends["grpo"]["first"]
    last_step, last = ends["grpo"]["last"]
    assert (first_step, last_step) == (0, 10)
    assert len(first) == len(last) == 8
    assert {r["step"] for r in last} == {10}
    assert ends["sft"]["first"][0] == ends["sft"]["last"][0] == 3


def test_report_contains_table_plots_and_escaped_samples(tmp_path):
    _write_jsonl(tmp_path / "metrics.jsonl", _synthetic_metrics())
    (tmp_path / "summary.json").write_text(json.dumps(SUMMARY), encoding="utf-8")
    samples = [_sample("grpo", 0, i) for i in range(3)]
    samples += [_sample("grpo", 50, 0, completion="<think>late & long</think> <answer>4</answer>")]
    _write_jsonl(tmp_path / "samples.jsonl", samples)

    path = write_report(tmp_path)
    assert path == tmp_path / "report.html"
    page = path.read_text(encoding="utf-8")
    assert "tiny-r1" in page
    for value in ("0.4062", "0.5000", "0.9900", "120.5", "64", "0.1250", "41.2"):
        assert value in page
    assert page.count("data:image/png;base64,") == 2
    assert "&lt;think&gt;step 0 sample 0&lt;/think&gt;" in page
    assert "&lt;think&gt;late &amp; long&lt;/think&gt;" in page
    assert "<think>" not in page and "<user>" not in page
    assert "first logged step: 0" in page and "last logged step: 50" in page
    assert "accuracy=1.000" in page


def test_report_for_empty_run(tmp_path):
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert "no metrics yet" in page.lower()
    assert "data:image/png" not in page
    assert tmp_path.name in page


def test_report_of_a_corrupted_summary_names_the_file_and_how_to_rewrite_it(tmp_path):
    (tmp_path / "summary.json").write_text('{"run": "x", "stag', encoding="utf-8")
    _write_jsonl(tmp_path / "metrics.jsonl", _synthetic_metrics())
    page = write_report(tmp_path).read_text(encoding="utf-8")  # the rest of the report is still written
    problem = summary_problem(tmp_path)
    assert problem.startswith(f"{tmp_path / 'summary.json'} is corrupted (not valid JSON: ")
    assert "running `r1lab run` on the recipe again rewrites it" in problem
    assert html.escape(problem) in page and "data:image/png;base64," in page
    (tmp_path / "summary.json").write_text("[1, 2]", encoding="utf-8")
    assert "is corrupted (a JSON list, not an object)" in summary_problem(tmp_path)
    (tmp_path / "summary.json").write_bytes(b'{"run": "\xe9"}')
    assert "is corrupted (not UTF-8 text)" in summary_problem(tmp_path)


def test_a_missing_or_valid_summary_is_no_problem(tmp_path):
    assert summary_problem(tmp_path) is None
    (tmp_path / "summary.json").write_text(json.dumps(SUMMARY))
    assert summary_problem(tmp_path) is None


def test_summary_table_markdown():
    table = summary_table_markdown(SUMMARY)
    lines = table.strip().splitlines()
    assert lines[0] == ("| stage | kind | pass@1 | cons@k | k | format rate | language consistency | mean length | "
                        "problems | data rows |")
    assert lines[1] == "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    assert lines[2] == "| sft | sft | 0.1250 | 0.2500 | 8 | 0.8750 | — | 41.2 | 64 | — |"
    assert lines[3] == "| grpo | grpo | 0.4062 | 0.5000 | 8 | 0.9900 | 0.7500 | 120.5 | 64 | — |"
    assert lines[4] == "| distill | distill | — | — | — | — | — | — | — | — |"
    assert lines[5] == "| rs | rejection_sampling | — | — | — | — | — | — | — | 300 |"
    assert len(lines) == 6


def test_summary_table_markdown_escapes_pipes_and_handles_no_stages():
    table = summary_table_markdown({"stages": [{"stage": "a|b", "kind": "rl", "eval": None}]})
    assert "| a\\|b | rl |" in table
    assert len(summary_table_markdown({"run": "x"}).strip().splitlines()) == 2


def test_check_columns_and_gate_appear_only_for_runs_that_report_checks(tmp_path):
    # the evaluation holds the task's metrics under their own keys (task.metrics); the gate writes its own format
    checked = {"run": "aha", "stages": [
        {"stage": "base", "kind": "pretrain", "eval": {"pass@1": 0.3, "checks/per_completion": 0.755,
                                                      "checks/ok_precision": 0.8, "checks/no_precision": 1.0}},
        {"stage": "gate", "kind": "check_gate", "eval": None, "gate": {
            "ok_precision": 0.65, "no_precision": 0.98, "checks_per_completion": 1.045, "passed": True,
            "accuracy_by_checks": {"0": {"pass_rate": 0.25, "count": 8}, "1": {"pass_rate": 0.75, "count": 4}}}},
    ]}
    table = summary_table_markdown(checked).splitlines()
    assert table[0].endswith('| checks per completion | "ok" precision | data rows |')
    assert table[2].endswith("| 0.76 | 0.8000 | — |") and table[3].endswith("| — | — | — |")
    assert "checks per completion" not in summary_table_markdown(SUMMARY)
    # a run written before the task metrics hook ("checks_per_completion", "ok_precision") keeps its numbers
    older = {"run": "old", "stages": [{"stage": "base", "kind": "pretrain", "eval": {
        "pass@1": 0.3, "checks_per_completion": 1.5, "ok_precision": 0.25}}]}
    old_table = summary_table_markdown(older).splitlines()
    assert old_table[0].endswith('| checks per completion | "ok" precision | data rows |')
    assert old_table[2].endswith("| 1.50 | 0.2500 | — |")
    (tmp_path / "summary.json").write_text(json.dumps(checked))
    page = write_report(tmp_path).read_text()
    assert "(passed)" in page and "0.6500" in page and "1 checks 0.7500 (4)" in page


def test_combined_report_has_a_section_per_run_and_one_summary(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    (first / "summary.json").write_text(json.dumps(SUMMARY))
    _write_jsonl(first / "metrics.jsonl", _synthetic_metrics())
    path = write_combined_report([first, second], tmp_path / "demo")
    assert path == tmp_path / "demo" / "report.html"
    page = path.read_text()
    assert page.count("<h2 ") == 2 and 'id="run-tiny-r1"' in page and 'id="run-second"' in page
    assert "0.4062" in page and page.count("data:image/png;base64,") == 2  # the first run's table and plots
    assert f"No run folder at {second}" in page
    combined = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert combined["runs"][0] == SUMMARY
    assert combined["runs"][1] == {"run": "second", "stages": [], "missing": str(second / "summary.json")}


# --- reward errors, and folders that are no run ---


def _reward_error_metrics():
    rows = [{"stage": "grpo", "step": step, "reward/mean": 0.5, "reward/accuracy_errors": 0,
             "reward/flaky_errors": errors} for step, errors in [(1, 4), (2, 0), (3, 2)]]
    rows.append({"stage": "grpo", "step": 3, "reward/accuracy_errors": 0, "reward/flaky_errors": 1})  # resumed: re-logged
    rows.append({"stage": "grpo", "step": 4, "final_eval/pass@1": 0.5})  # no reward counts on an eval line
    rows.append({"stage": "ppo", "step": 1, "reward/accuracy_errors": 0})
    rows.append({"stage": "sft", "step": 1, "loss": 1.0})
    return rows


def test_reward_error_totals_sum_each_step_once_per_stage(tmp_path):
    _write_jsonl(tmp_path / "metrics.jsonl", _reward_error_metrics())
    assert reward_error_totals(tmp_path, "grpo") == {"accuracy": 0, "flaky": 5}  # 4 + 0 + 1 (step 3's last line)
    assert reward_error_totals(tmp_path, "ppo") == {"accuracy": 0}
    assert reward_error_totals(tmp_path, "sft") == {}
    assert reward_error_totals(tmp_path / "missing", "grpo") == {}


def test_report_has_a_reward_error_table_per_rl_stage(tmp_path):
    _write_jsonl(tmp_path / "metrics.jsonl", _reward_error_metrics())
    page = write_report(tmp_path).read_text()
    assert "<b>Reward errors</b>" in page
    assert "<tr><td>grpo</td><td>flaky</td><td>5</td><td>2</td><td>3</td></tr>" in page
    assert "<tr><td>ppo</td><td>accuracy</td><td>0</td><td>0</td><td>1</td></tr>" in page
    _write_jsonl(tmp_path / "metrics.jsonl", [{"stage": "grpo", "step": 1, "reward/accuracy_errors": 0}])
    assert "Reward errors: none (every reward scored every completion)." in write_report(tmp_path).read_text()
    _write_jsonl(tmp_path / "metrics.jsonl", [{"stage": "sft", "step": 1, "loss": 1.0}])
    assert "Reward errors" not in write_report(tmp_path).read_text()


def test_check_run_folder_says_what_a_folder_is_and_what_to_give(tmp_path):
    run = tmp_path / "runs" / "tiny"
    (run / "grpo" / "final").mkdir(parents=True)
    (run / "config.yaml").write_text("name: tiny\n")
    check_run_folder(run)  # a run that has not finished a stage yet is a run
    with pytest.raises(NotARunError, match=f"^no run folder at {tmp_path / 'nope'}$"):
        check_run_folder(tmp_path / "nope")
    with pytest.raises(NotARunError) as stage:
        check_run_folder(run / "grpo")
    assert str(stage.value) == (f"{run / 'grpo'} is a stage folder of the run {run}, not a run; give the run: "
                                f"r1lab report {run}")
    with pytest.raises(NotARunError) as runs:
        check_run_folder(tmp_path / "runs")
    assert str(runs.value).startswith(f"{tmp_path / 'runs'} is not a run but holds runs: {run}; give one of them")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotARunError) as empty:
        check_run_folder(tmp_path / "empty")
    assert str(empty.value) == (f"{tmp_path / 'empty'} is not a run folder (a run folder has summary.json, "
                                f"config.yaml, metrics.jsonl, which `r1lab run` writes); give the folder of a run, "
                                f"e.g. runs/<name>")


def test_combined_summary_notes_a_corrupted_summary(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{oops")
    write_combined_report([run], tmp_path / "out")
    combined = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert combined["runs"][0]["corrupted"] == summary_problem(run)


def test_reasoning_curves_draw_only_the_panels_that_have_data(tmp_path):
    """A task without self-checks gets the completion-length panel alone, not two empty ones beside it."""
    import struct

    from r1lab.report import plot_reasoning_metrics

    def png_width(path):
        return struct.unpack(">I", path.read_bytes()[16:20])[0]  # IHDR: width, then height

    lengths = {"completion/length_p10": 10, "completion/length_p50": 20, "completion/length_p90": 30}
    plain, checks = tmp_path / "plain", tmp_path / "checks"
    for folder, extra in ((plain, {}), (checks, {"checks/per_completion": 1.5, "accuracy/by_checks/1": 0.5})):
        folder.mkdir()
        (folder / "metrics.jsonl").write_text("".join(
            json.dumps({"stage": "grpo", "step": step, **lengths, **extra}) + "\n" for step in range(1, 6)))
    assert png_width(plot_reasoning_metrics(plain)) * 3 == pytest.approx(png_width(plot_reasoning_metrics(checks)),
                                                                           rel=0.02)
    (plain / "metrics.jsonl").write_text(json.dumps({"stage": "sft", "step": 1, "loss": 1.0}) + "\n")
    assert plot_reasoning_metrics(plain) is None
