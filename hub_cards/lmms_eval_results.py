"""lmms-eval's results file (`<output_path>/<model>/<date>_results.json`) read into the cards' per-budget layout.

lmms-eval evaluates one model configuration per run, so one file holds one budget: the `num_visual_tokens` of its
`config.model_args`. Each task becomes one row of scores, named after the task:

    {"results": {"<task>": {"alias": ..., "<metric>,<filter>": 0.61, "<metric>_stderr,<filter>": ...}},
     "configs": {"<task>": {"dataset_path": ..., "dataset_name": ..., "test_split": ...}},
     "n-samples": {"<task>": {"effective": 300}},
     "config": {"model": "delta_llava", "model_args": "...,num_visual_tokens=36"}}

Metric names lose their filter suffix (`exact_match,none` -> `exact_match`); standard errors and non-numeric entries
are left out.
"""

from pathlib import Path

LMMS_EVAL_DATASET_TYPE = "lmms-eval"


def is_lmms_eval_results(raw: object) -> bool:
    """Whether a parsed JSON file has lmms-eval's results layout."""
    return isinstance(raw, dict) and isinstance(raw.get("results"), dict) and isinstance(raw.get("config"), dict)


def read_lmms_eval_results(raw: dict, path: Path) -> tuple[int, dict[str, dict], dict[str, dict[str, str]]]:
    """The budget of the run, the scores per task (with `num_samples`) and the dataset of every task."""
    budget = _budget(raw["config"], path)
    scores, datasets = {}, {}
    for task, entries in raw["results"].items():
        metrics = {
            name.split(",", 1)[0]: value
            for name, value in entries.items()
            if "," in name and "_stderr" not in name and isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        if not metrics:
            continue  # a group's row without its own scores
        samples = raw.get("n-samples", {}).get(task, {}).get("effective")
        scores[task] = metrics | ({"num_samples": samples} if isinstance(samples, int) else {})
        config = raw.get("configs", {}).get(task, {})
        source = "/".join(str(part) for part in (config.get("dataset_path"), config.get("dataset_name")) if part)
        datasets[task] = {
            "name": f"{task} ({source})" if source else task,
            "type": str(config.get("dataset_path") or LMMS_EVAL_DATASET_TYPE),
            "split": str(config.get("test_split") or "test"),
        }
    if not scores:
        raise ValueError(f"--results {path}: the lmms-eval results hold no numeric task scores.")
    return budget, scores, datasets


def _budget(run_config: dict, path: Path) -> int:
    """`num_visual_tokens` from the run's `--model_args` (a "k=v,k=v" string or a mapping)."""
    model_args = run_config.get("model_args") or ""
    if isinstance(model_args, str):
        model_args = dict(item.split("=", 1) for item in model_args.split(",") if "=" in item)
    budget = str(model_args.get("num_visual_tokens", ""))
    if not budget.isdigit():
        raise ValueError(
            f"--results {path}: the lmms-eval run does not say its budget. Evaluate with --model_args "
            "pretrained=<checkpoint>,num_visual_tokens=<N> so the scores can be put on the card of that budget."
        )
    return int(budget)


__all__ = ["is_lmms_eval_results", "read_lmms_eval_results"]
