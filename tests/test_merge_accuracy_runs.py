"""benchmarks/merge_accuracy_runs.py: pieces of the accuracy table merged once per checkpoint, mismatches refused."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import accuracy_vs_budget as benchmark  # noqa: E402
import measure  # noqa: E402
import merge_accuracy_runs as merge  # noqa: E402

TYPES = ("attribute", "position", "count", "existence", "text", "caption", "overall")
MAJORITY = {name: {"accuracy": 0.2} for name in TYPES}


def row(checkpoint: str, group: str, budget: int, seed: int, overall: float) -> dict:
    accuracy = {name: overall for name in TYPES}
    return {
        "checkpoint": checkpoint, "group": group, "label": group, "projector_type": "delta", "budget": budget,
        "max_object_tokens": None, "object_tokens_kept": None, "tokens": budget, "seed": seed,
        "train_s": 10.0, "eval_s": 1.0, "wall_s": 11.0, "accuracy": accuracy,
        "majority": {name: 0.2 for name in TYPES}, "learned": overall > 0.25,
    }  # fmt: skip


def run_record(rows: list[dict], **setting_overrides) -> dict:
    settings = {key: 1 for key in merge.SHARED_SETTINGS} | {"patch_grid": 4, "allowed_budgets": [16, 4, 1]}
    names = {r["checkpoint"]: r["group"] for r in rows}
    return {
        "command": "python benchmarks/accuracy_vs_budget.py ...",
        "settings": settings | setting_overrides,
        "training_runs_done": f"{len(names)} of {len(names)}",
        "total_s": 30.0,
        "warmup_final_loss": 0.5,
        "majority": MAJORITY,
        "checkpoints": [{"name": name, "group": group, "train_s": 10.0} for name, group in names.items()],
        "rows": rows,
    }


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(measure, "RESULTS_DIR", tmp_path)
    return tmp_path


def write(results_dir: Path, name: str, record: dict) -> None:
    (results_dir / f"{name}.json").write_text(json.dumps(record))


def test_merge_takes_each_checkpoint_once_and_reports_reruns(results_dir):
    write(results_dir, "first", run_record([row("delta_b4_s0", "delta", 4, 0, 0.50), row("delta_b1_s0", "delta", 1, 0, 0.40)]))
    write(results_dir, "second", run_record([
        row("delta_b4_s0", "delta", 4, 0, 0.46), row("delta_b4_s1", "delta", 4, 1, 0.60), row("delta_b1_s1", "delta", 1, 1, 0.2)
    ]))  # fmt: skip
    payload = merge.main(["first", "second", "--results_name", "merged"])

    assert [c["name"] for c in payload["checkpoints"]] == ["delta_b4_s0", "delta_b1_s0", "delta_b4_s1", "delta_b1_s1"]
    assert [(r["checkpoint"], r["source"]) for r in payload["rows"]] == [
        ("delta_b4_s0", "first"), ("delta_b1_s0", "first"), ("delta_b4_s1", "second"), ("delta_b1_s1", "second")
    ]
    (rerun,) = payload["reruns"]
    assert rerun["checkpoint"] == "delta_b4_s0" and rerun["difference"] == pytest.approx(-0.04)
    at_four = next(e for e in payload["summary"] if e["budget"] == 4)
    assert at_four["seeds"] == [0, 1] and at_four["accuracy"]["overall"]["mean"] == pytest.approx(0.55)
    assert at_four["accuracy"]["overall"]["std"] > 0
    _, table = benchmark.summary_table(payload["summary"], MAJORITY)
    learned = {line[0] + "@" + line[1]: line[-2] for line in table[:-1]}
    assert learned == {"delta@4": "yes", "delta@1": "1 of 2"}  # delta@1: seed 0 learned, seed 1 at chance
    assert (results_dir / "merged.json").is_file() and (results_dir / "merged.png").stat().st_size > 0


def test_runs_trained_differently_are_refused(results_dir):
    write(results_dir, "first", run_record([row("delta_b4_s0", "delta", 4, 0, 0.5)]))
    write(results_dir, "longer", run_record([row("delta_b1_s0", "delta", 1, 0, 0.5)], max_steps=2))
    with pytest.raises(ValueError, match="max_steps"):
        merge.main(["first", "longer"])
    assert not (results_dir / "accuracy_vs_budget_combined.json").exists()  # nothing written half


def test_missing_run_and_overwriting_an_input_are_refused(results_dir):
    write(results_dir, "first", run_record([row("delta_b4_s0", "delta", 4, 0, 0.5)]))
    with pytest.raises(FileNotFoundError, match="no_such_run"):
        merge.main(["first", "no_such_run"])
    with pytest.raises(ValueError, match="is one of the inputs"):
        merge.main(["first", "--results_name", "first"])


def test_excluded_groups_are_left_out_and_recorded(results_dir):
    old = [row("tokenpacker_b1_s0", "tokenpacker", 1, 0, 0.2), row("delta_b1_s0", "delta", 1, 0, 0.4)]
    write(results_dir, "before_fix", run_record(old))
    write(results_dir, "after_fix", run_record([row("tokenpacker_b1_s0", "tokenpacker", 1, 0, 0.45)]))
    payload = merge.main(["before_fix", "after_fix", "--exclude", "before_fix:tokenpacker"])
    assert [(r["checkpoint"], r["source"]) for r in payload["rows"]] == [
        ("delta_b1_s0", "before_fix"), ("tokenpacker_b1_s0", "after_fix")
    ]
    assert payload["reruns"] == [] and payload["excluded"] == {"before_fix": ["tokenpacker"]}
    with pytest.raises(ValueError, match="has no 'avgpool' rows"):
        merge.main(["before_fix", "after_fix", "--exclude", "before_fix:avgpool"])
    with pytest.raises(ValueError, match="RUN:GROUP"):
        merge.main(["before_fix", "after_fix", "--exclude", "elsewhere:tokenpacker"])
