"""Evaluation results a checkpoint actually has, read from the JSON file(s) the quick start / evaluation wrote.

Either lmms-eval's results files (one per budget, see `lmms_eval_results`) or the quick start's layout (what
`delta-llava-quickstart` writes to `results.json`; extra keys are ignored):

    {
      "budgets": {"144": {"attribute": {"accuracy": 0.61, "num_samples": 120}, ..., "overall": {...}}, "36": ...},
      "majority": {"attribute": {"accuracy": 0.35, "chance": 0.25, ...}, ...},  # optional
      "dataset": {"name": "...", "type": "...", "split": "test"},               # optional
      "arguments": {...}                                                        # optional, see training_record
    }

Scores per question type are numbers (`accuracy`, and `precision`/`recall`/`f1`/`yes_ratio` for yes/no questions,
`bleu` for captions); `num_samples` is a count, not a score.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .lmms_eval_results import LMMS_EVAL_DATASET_TYPE, is_lmms_eval_results, read_lmms_eval_results

# The quick start evaluates on the project's own generated set and does not name it in its results file.
SYNTHETIC_VQA = {"name": "Delta-LLaVA synthetic VQA", "type": "delta-llava-synthetic-vqa", "split": "test"}
COUNT_KEYS = ("num_samples",)


@dataclass
class EvaluationResults:
    """Scores per budget and question type (or lmms-eval task), the majority-answer baseline, and where they came
    from; `task_datasets` names the dataset of rows that have their own (lmms-eval tasks), `dataset` the others'."""

    source: Path
    scores: dict[int, dict[str, dict[str, float]]]
    majority: dict[str, dict] = field(default_factory=dict)
    dataset: dict[str, str] = field(default_factory=lambda: dict(SYNTHETIC_VQA))
    raw: dict = field(default_factory=dict)
    task_datasets: dict[str, dict[str, str]] = field(default_factory=dict)
    other_sources: list[Path] = field(default_factory=list)

    @property
    def budgets(self) -> list[int]:
        return sorted(self.scores, reverse=True)

    def at_budget(self, budget: int) -> dict[str, dict[str, float]] | None:
        """Scores per question type at `budget`, or None when the file has none at that budget."""
        return self.scores.get(budget)

    def dataset_of(self, name: str) -> dict[str, str]:
        """The dataset the row `name` (a question type or an lmms-eval task) was scored on."""
        return self.task_datasets.get(name, self.dataset)

    @property
    def source_names(self) -> str:
        return ", ".join(path.name for path in [self.source, *self.other_sources])


def metric_values(type_scores: dict) -> dict[str, float]:
    """The numeric scores of one question type (counts such as `num_samples` left out)."""
    return {
        name: value
        for name, value in type_scores.items()
        if name not in COUNT_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def load_evaluation_results(paths: str | Path | Sequence[str | Path]) -> EvaluationResults:
    """Reads and checks one results file, or several lmms-eval results files (one per budget) merged; a file that
    does not hold per-budget scores is a ValueError saying why."""
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(path) for path in paths]
    if not paths:
        raise ValueError("--results got no file. Pass the results JSON the evaluation wrote.")
    raws = {path: _read_json(path) for path in paths}
    if all(is_lmms_eval_results(raw) for raw in raws.values()):
        return _merge_lmms_eval_results(raws)
    if len(paths) > 1:
        raise ValueError(
            f"--results got {len(paths)} files, which works for lmms-eval results files only (one per budget); "
            "pass the quick start's results.json alone."
        )
    return _quickstart_results(paths[0], raws[paths[0]])


def _read_json(path: Path) -> object:
    if not path.is_file():
        raise FileNotFoundError(f"--results {path} does not exist. Pass the results JSON the evaluation wrote.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"--results {path} is not valid JSON ({error}).") from error


def _merge_lmms_eval_results(raws: dict[Path, dict]) -> EvaluationResults:
    """One budget per lmms-eval run; the same task twice at one budget is refused (which run would the card show?)."""
    scores, task_datasets = {}, {}
    for path, raw in raws.items():
        budget, task_scores, datasets = read_lmms_eval_results(raw, path)
        twice = sorted(set(task_scores) & set(scores.get(budget, {})))
        if twice:
            raise ValueError(
                f"--results {path} scores {twice} at {budget} visual tokens again; pass one lmms-eval run per task "
                "and budget."
            )
        scores.setdefault(budget, {}).update(task_scores)
        task_datasets |= datasets
    dataset = {
        "name": "lmms-eval: " + ", ".join(sorted(task_datasets)),
        "type": LMMS_EVAL_DATASET_TYPE,
        "split": ", ".join(sorted({dataset["split"] for dataset in task_datasets.values()})),
    }
    first, *others = raws
    return EvaluationResults(
        source=first, scores=scores, dataset=dataset, raw=raws[first], task_datasets=task_datasets, other_sources=others
    )


def _quickstart_results(path: Path, raw: object) -> EvaluationResults:
    layout = (
        'expected {"budgets": {"<budget>": {"<question type>": {"accuracy": ...}}}} as delta-llava-quickstart writes, '
        "or lmms-eval's <date>_results.json"
    )
    if not isinstance(raw, dict) or not isinstance(raw.get("budgets"), dict) or not raw["budgets"]:
        raise ValueError(f"--results {path} has no per-budget scores: {layout}.")
    scores = {}
    for budget, per_type in raw["budgets"].items():
        if not str(budget).isdigit() or not isinstance(per_type, dict):
            raise ValueError(
                f"--results {path}: budget key {budget!r} is not a token count or has no scores; {layout}."
            )
        for question_type, type_scores in per_type.items():
            if not isinstance(type_scores, dict) or not metric_values(type_scores):
                raise ValueError(
                    f"--results {path}: budget {budget}, {question_type!r} holds no numeric scores; {layout}."
                )
        scores[int(budget)] = per_type
    dataset = {**SYNTHETIC_VQA, **raw["dataset"]} if isinstance(raw.get("dataset"), dict) else dict(SYNTHETIC_VQA)
    majority = raw.get("majority") if isinstance(raw.get("majority"), dict) else {}
    return EvaluationResults(source=path, scores=scores, majority=majority, dataset=dataset, raw=raw)


__all__ = ["EvaluationResults", "load_evaluation_results", "metric_values"]
