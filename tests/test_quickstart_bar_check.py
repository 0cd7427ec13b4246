"""The quick start's seed x kernels check at toy size: every run done in its own process, the summary and the table."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import measure  # noqa: E402
import quickstart_bar_check  # noqa: E402

TINY = ["--train_samples", "48", "--test_samples", "12", "--warmup_steps", "2", "--train_steps", "2",
        "--single_budget_steps", "1", "--batch_size", "4", "--elastic_budgets", "9", "1", "--eval_budgets", "9", "1",
        "--dataloader_workers", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    root = tmp_path_factory.mktemp("bar_check")
    patch = pytest.MonkeyPatch()
    patch.setattr(measure, "RESULTS_DIR", root / "results")
    try:
        runs = quickstart_bar_check.main(
            ["--seeds", "3", "--kernels", "default", "avx2", "--output_dir", str(root / "runs"), "--results_name", "tiny",
             "--", *TINY]  # fmt: skip
        )
    finally:
        patch.undo()
    return root, runs


def test_every_seed_and_kernel_setting_runs_once(check):
    root, runs = check
    assert [(run["kernels"], run["seed"]) for run in runs] == [("default", 3), ("avx2", 3)]
    for run in runs:
        folder = root / "runs" / f"{run['kernels']}_s3"
        arguments = json.loads((folder / "results.json").read_text())["arguments"]
        assert arguments["seed"] == 3 and arguments["train_steps"] == 2  # the arguments after -- reached the run
        assert run["wall_s"] > 0 and set(run["verdict"]) == {"9", "1"}
    recorded = [run["cpu_capability"] for run in runs]  # each from the run's own environment
    assert recorded == [quickstart_bar_check.cpu_capability(kernels) for kernels in ("default", "avx2")]


def test_generic_kernels_are_torchs_unvectorised_ones_on_any_cpu():
    assert quickstart_bar_check.cpu_capability("generic") == "DEFAULT"


def test_summary_json_plot_and_verdicts(check):
    root, runs = check
    record = json.loads((root / "results" / "tiny.json").read_text())
    assert len(record["runs"]) == 2 and (root / "results" / "tiny.png").stat().st_size > 0
    assert record["all_met"] == all(v["meets_bar"] for run in runs for v in run["verdict"].values())
    headers, rows = quickstart_bar_check.summary_table(runs)
    assert headers == ["run", "wall s", "9 tok", "1 tok"]
    for run, row in zip(runs, rows):
        for budget, cell in zip(("9", "1"), row[2:]):
            assert cell.startswith("met") == run["verdict"][budget]["meets_bar"]
            if cell.startswith("met"):  # with the condition that has the least room, and that room
                name, room = quickstart_bar_check.closest_margin(run, budget)
                assert room >= -1e-9 and cell == f"met (closest: {name} {room:+.3f})"
            else:  # names what missed: a type under its margin or the overall gain
                assert "(<" in cell


def test_reuse_keeps_finished_runs_and_their_wall_times(check, capsys):
    root, first = check
    patch = pytest.MonkeyPatch()
    patch.setattr(measure, "RESULTS_DIR", root / "results")
    patch.setattr(quickstart_bar_check, "run_quickstart", lambda *args: pytest.fail("a finished run was rerun"))
    try:
        runs = quickstart_bar_check.main(
            ["--seeds", "3", "--kernels", "avx2", "--output_dir", str(root / "runs"), "--results_name", "reused",
             "--reuse"]  # fmt: skip
        )
    finally:
        patch.undo()
    assert "Reusing avx2 kernels, seed 3" in capsys.readouterr().out
    assert runs[0]["wall_s"] == first[1]["wall_s"]  # the time measured when it ran, read back from its folder


def test_merge_joins_earlier_summaries_and_refuses_repeats_or_other_settings(check, tmp_path, monkeypatch):
    _, runs = check
    monkeypatch.setattr(measure, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(quickstart_bar_check, "run_quickstart", lambda *args: pytest.fail("--merge ran a quick start"))
    other_recipe = {**runs[1], "quickstart_arguments": [*TINY, "--learning_rate", "1e-3"]}
    for name, part in {"part_1": [runs[0]], "part_2": [runs[1]], "other_recipe": [other_recipe]}.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"runs": part}))
    merged = quickstart_bar_check.main(["--merge", "part_1", "part_2", "--results_name", "joined"])
    record = json.loads((tmp_path / "joined.json").read_text())
    assert [run["label"] for run in merged] == [run["label"] for run in runs] == [r["label"] for r in record["runs"]]
    assert record["all_met"] == all(v["meets_bar"] for run in runs for v in run["verdict"].values())
    assert (tmp_path / "joined.png").stat().st_size > 0
    with pytest.raises(ValueError, match="more than once"):
        quickstart_bar_check.main(["--merge", "part_1", "part_1", "--results_name", "repeated"])
    with pytest.raises(ValueError, match="different quick-start arguments"):
        quickstart_bar_check.main(["--merge", "part_1", "other_recipe", "--results_name", "mixed"])
    assert not (tmp_path / "repeated.json").exists() and not (tmp_path / "mixed.json").exists()  # nothing written half


def test_closest_margin_and_misses_read_the_rooms_of_the_quick_starts_verdict():
    from delta_llava.training.budget_report import learning_verdict

    majority = {"position": 0.12, "caption": 0.02, "overall": 0.22}
    accuracy = {"36": {"position": 0.175, "caption": 0.10, "overall": 0.50},
                "16": {"position": 0.16, "caption": 0.10, "overall": 0.46},
                "1": {"position": 0.05, "caption": 0.0, "overall": 0.35}}  # fmt: skip
    nested = {name: {"accuracy": value} for name, value in majority.items()}
    results = {"majority": nested, "budgets": {b: {n: {"accuracy": v} for n, v in a.items()} for b, a in accuracy.items()}}
    run = {"majority": majority, "accuracy": accuracy, "verdict": learning_verdict(results, [36, 1])}
    assert quickstart_bar_check.missed(run, "16") == "not judged"  # not trained: the quick start judges no bar there
    run["verdict"] = learning_verdict(results, [36, 16, 1])
    assert quickstart_bar_check.closest_margin(run, "36") == ("position", 0.005)  # 0.175 - 0.12 - 0.05
    assert quickstart_bar_check.closest_margin(run, "1") == ("overall", 0.03)  # only the overall gain is judged at 1
    assert quickstart_bar_check.missed(run, "36") == "met (closest: position +0.005)"
    assert quickstart_bar_check.missed(run, "16") == "position 0.160 (<0.170); overall +0.240 (<+0.25)"
