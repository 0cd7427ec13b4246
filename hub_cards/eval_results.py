"""Evaluation results a checkpoint actually has, read from the JSON file the quick start / evaluation wrote.

Layout (what `delta-llava-quickstart` writes to `results.json`; extra keys are ignored):

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
from dataclasses import dataclass, field
from pathlib import Path

# The quick start evaluates on the project's own generated set and does not name it in its results file.
SYNTHETIC_VQA = {"name": "Delta-LLaVA synthetic VQA", "type": "delta-llava-synthetic-vqa", "split": "test"}
COUNT_KEYS = ("num_samples",)


@dataclass
class EvaluationResults:
    """Scores per budget and question type, the majority-answer baseline, and where they came from."""

    source: Path
    scores: dict[int, dict[str, dict[str, float]]]
    majority: dict[str, dict] = field(default_factory=dict)
    dataset: dict[str, str] = field(default_factory=lambda: dict(SYNTHETIC_VQA))
    raw: dict = field(default_factory=dict)

    @property
    def budgets(self) -> list[int]:
        return sorted(self.scores, reverse=True)

    def at_budget(self, budget: int) -> dict[str, dict[str, float]] | None:
        """Scores per question type at `budget`, or None when the file has none at that budget."""
        return self.scores.get(budget)


def metric_values(type_scores: dict) -> dict[str, float]:
    """The numeric scores of one question type (counts such as `num_samples` left out)."""
    return {
        name: value
        for name, value in type_scores.items()
        if name not in COUNT_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def load_evaluation_results(path: str | Path) -> EvaluationResults:
    """Reads and checks a results file; a file that does not hold per-budget scores is a ValueError saying why."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--results {path} does not exist. Pass the results.json the evaluation wrote.")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"--results {path} is not valid JSON ({error}).") from error
    layout = (
        'expected {"budgets": {"<budget>": {"<question type>": {"accuracy": ...}}}} as delta-llava-quickstart writes'
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
