"""The synthetic VQA set (or any dataset with its `images`, `messages`, `answer`, `question_type` columns) as a local
lmms-eval task.

`write_synthetic_vqa_task(dataset, task_dir)` saves the rows and one task YAML in `task_dir`; pass the folder to
lmms-eval:

    lmms-eval --model delta_llava --model_args pretrained=<checkpoint> --include_path <task_dir> \
        --tasks delta_llava_synthetic_vqa

The task asks each row's own user turn (text and image in the dataset's order, so the prompt is the one
`training.evaluate_vqa` renders), decodes like `evaluate_vqa` (greedy, 24 new tokens, no stop string) and scores with
the project's `score_predictions`: `overall_accuracy`, and `<question type>_accuracy` for each type in the rows.
"""

from pathlib import Path

import datasets
import yaml

from ..training.evaluate_vqa import user_turn
from ..training.synthetic_vqa import question_text
from ..training.vqa_metrics import score_predictions

TASK_NAME = "delta_llava_synthetic_vqa"
SPLIT = "test"
OVERALL = "overall"
MAX_NEW_TOKENS = 24  # what `evaluate_vqa.generate_answers` uses
REQUIRED_COLUMNS = ("images", "messages", "answer", "question_type")


class _FunctionReference(str):
    """A dotted function name that YAML writes as lmms-eval's `!function` tag."""


class _TaskDumper(yaml.SafeDumper):
    pass


_TaskDumper.add_representer(
    _FunctionReference, lambda dumper, name: dumper.represent_scalar("!function", f"{__name__}.{name}")
)


def write_synthetic_vqa_task(dataset: datasets.Dataset, task_dir: str | Path, task_name: str = TASK_NAME) -> Path:
    """Save `dataset` as the task's `test` split under `<task_dir>/<task_name>_data` and write
    `<task_dir>/<task_name>.yaml`; return the YAML's path."""
    missing = [column for column in REQUIRED_COLUMNS if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"The dataset lacks the column(s) {missing}; a synthetic-VQA-style task needs {list(REQUIRED_COLUMNS)} "
            "(see training.synthetic_vqa.make_synthetic_vqa)."
        )
    task_dir = Path(task_dir).resolve()
    data_dir = task_dir / f"{task_name}_data"
    datasets.DatasetDict({SPLIT: dataset}).save_to_disk(str(data_dir))
    scored = [OVERALL, *sorted(set(dataset["question_type"]))]
    config = {
        "task": task_name,
        "dataset_path": str(data_dir),
        "dataset_kwargs": {"load_from_disk": True},
        "test_split": SPLIT,
        "output_type": "generate_until",
        "doc_to_text": _FunctionReference("doc_to_text"),
        "doc_to_messages": _FunctionReference("doc_to_messages"),
        "doc_to_target": "answer",
        "process_results": _FunctionReference("process_results"),
        "generation_kwargs": {"max_new_tokens": MAX_NEW_TOKENS, "temperature": 0, "do_sample": False, "until": []},
        "metric_list": [
            {
                "metric": f"{name}_accuracy",
                "aggregation": _FunctionReference("aggregate_accuracy"),
                "higher_is_better": True,
            }
            for name in scored
        ],
        "metadata": {"version": 1.0},
    }
    path = task_dir / f"{task_name}.yaml"
    path.write_text(yaml.dump(config, Dumper=_TaskDumper, sort_keys=False))
    return path


def doc_to_text(doc: dict) -> str:
    """The row's question (lmms-eval's request context; the model reads `doc_to_messages`)."""
    return question_text(doc["messages"])


def doc_to_messages(doc: dict) -> list[dict]:
    """The row's user turn in lmms-eval's chat format: its `{"type": "image"}` parts carry the row's images in order."""
    images = iter(doc["images"])
    messages = []
    for message in user_turn(doc["messages"]):
        content = [
            {"type": "image", "url": next(images)}
            if part["type"] == "image"
            else {"type": "text", "text": part["text"]}
            for part in message["content"]
        ]
        messages.append({"role": message["role"], "content": content})
    return messages


def process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    """One record for `overall_accuracy` and one for the row's `<question type>_accuracy`."""
    record = {"prediction": results[0], "answer": doc["answer"], "question_type": doc["question_type"]}
    return {
        f"{OVERALL}_accuracy": {**record, "scored": OVERALL},
        f"{doc['question_type']}_accuracy": {**record, "scored": doc["question_type"]},
    }


def aggregate_accuracy(records: list[dict]) -> float:
    """`score_predictions`' accuracy of the records' scope (`overall` or their question type)."""
    scores = score_predictions(
        [record["prediction"] for record in records],
        [record["answer"] for record in records],
        [record["question_type"] for record in records],
    )
    return scores[records[0]["scored"]]["accuracy"]
