"""How a checkpoint was trained, summarised from the files its training wrote or read.

Two sources, both optional: `delta-llava-train` YAML recipes (`--training_recipe`, one per stage) and the
`arguments` block the quick start writes into its `results.json`. Only the settings listed below are shown.
"""

from dataclasses import dataclass
from pathlib import Path

import yaml

from .eval_results import EvaluationResults

# Setting -> what the card calls it; recipe keys and quick start argument names side by side.
SUMMARY_FIELDS = {
    "stage": "stage",
    "model_name_or_path": "starts from",
    "vision_tower": "vision tower",
    "language_model": "language model",
    "llava_checkpoint": "LLaVA checkpoint",
    "dataset_path": "training data",
    "train_samples": "training samples",
    "num_visual_tokens": "visual tokens",
    "elastic_budgets": "budgets drawn per batch",
    "elastic_budget_weights": "draws per budget (relative)",
    "train_budget_weight": "draws at the default budget per draw at each other",
    "freeze_vision_tower": "vision tower frozen",
    "use_lora": "LoRA",
    "use_qlora": "QLoRA",
    "lora_r": "LoRA rank",
    "num_train_epochs": "epochs",
    "train_epochs": "epochs",
    "max_steps": "steps",
    "learning_rate": "learning rate",
    "projector_learning_rate": "projector learning rate",
    "per_device_train_batch_size": "batch size per device",
    "batch_size": "batch size",
    "gradient_accumulation_steps": "gradient accumulation",
    "lr_scheduler_type": "schedule",
    "warmup_steps": "warm-up",
    "weight_decay": "weight decay",
    "max_length": "max sequence length",
    "bf16": "bf16",
    "seed": "seed",
}


@dataclass
class TrainingRecord:
    """The summarised settings of one training run (or stage) and the file they came from."""

    source: str
    settings: list[tuple[str, object]]
    elastic_budgets: list[int] | None = None


def summarise(settings: dict, source: str) -> TrainingRecord:
    """Keeps the settings of `SUMMARY_FIELDS` that are set, in that order."""
    kept = [(label, settings[key]) for key, label in SUMMARY_FIELDS.items() if settings.get(key) not in (None, "")]
    budgets = settings.get("elastic_budgets")
    return TrainingRecord(source=source, settings=kept, elastic_budgets=[int(b) for b in budgets] if budgets else None)


def read_training_records(
    recipe_paths: list[str | Path] = (), results: EvaluationResults | None = None
) -> list[TrainingRecord]:
    """One record per YAML recipe, plus one for the quick start's `arguments` when the results file holds them."""
    records = []
    for path in map(Path, recipe_paths):
        if not path.is_file():
            raise FileNotFoundError(
                f"--training_recipe {path} does not exist. Pass the YAML given to delta-llava-train."
            )
        settings = yaml.safe_load(path.read_text())
        if not isinstance(settings, dict):
            raise ValueError(f"--training_recipe {path} is not a YAML mapping of training arguments.")
        records.append(summarise(settings, path.name))
    if results and isinstance(results.raw.get("arguments"), dict):
        record = summarise(results.raw["arguments"], results.source.name)
        if "train_loss" in results.raw:
            record.settings.append(("final training loss", results.raw["train_loss"]))
        records.append(record)
    return records


__all__ = ["TrainingRecord", "read_training_records"]
