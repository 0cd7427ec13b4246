"""Model cards for exported Delta-LLaVA checkpoints, rendered from `model_card.md.jinja`.

The YAML metadata is built as a `huggingface_hub.ModelCardData`; its `model-index` holds only scores read from a
results file (see `eval_results`), and a checkpoint without one gets a card that says so and shows no numbers.
"""

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from delta_llava import DeltaLlavaConfig

from .eval_results import SYNTHETIC_VQA, EvaluationResults, metric_values
from .flops import InferenceCost, InferenceFlops, format_flops
from .training_record import TrainingRecord

TEMPLATE_PATH = Path(__file__).with_name("model_card.md.jinja")
LIBRARY_NAME = "transformers"
PIPELINE_TAG = "image-text-to-text"
TASK_TYPE = "visual-question-answering"
FLOPS_PARTS = (("vision tower", "vision"), ("projector", "projector"), ("LLM prefill", "prefill"), ("total", "total"))
PROJECTOR_NAMES = {
    "delta": "Delta-LLaVA projector",
    "mlp2x_gelu": "LLaVA-1.5 two-layer MLP projector",
    "tokenpacker": "TokenPacker-style point-to-region projector",
    "avgpool": "average-pooling + MLP projector",
}


def is_hub_model_id(name: str | None) -> bool:
    """True for a valid Hub repository id ("org/name") that is not a folder on this machine."""
    if not name or Path(name).exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return "/" in name


def recorded_base_models(config: DeltaLlavaConfig) -> list[str]:
    """The vision tower's and the language model's Hub ids, when the checkpoint's config recorded them."""
    names = [getattr(sub_config, "_name_or_path", "") for sub_config in (config.vision_config, config.text_config)]
    return [name for name in names if is_hub_model_id(name)]


def evaluation_results_for_card(results: EvaluationResults, budget: int) -> list[EvalResult]:
    """One `EvalResult` per score of every question type at `budget`, exactly as the file holds them."""
    scores = results.at_budget(budget) or {}
    return [
        EvalResult(
            task_type=TASK_TYPE,
            task_name="Visual Question Answering",
            dataset_type=results.dataset_of(question_type)["type"],
            dataset_name=results.dataset_of(question_type)["name"],
            dataset_split=results.dataset_of(question_type).get("split"),
            metric_type=metric,
            metric_name=f"{question_type} {metric}",
            metric_value=value,
        )
        for question_type, type_scores in scores.items()
        for metric, value in metric_values(type_scores).items()
    ]


def build_card_data(
    config: DeltaLlavaConfig,
    budget: int,
    model_name: str,
    results: EvaluationResults | None = None,
    base_model: list[str] | None = None,
    datasets: list[str] | None = None,
    license: str = "other",
) -> ModelCardData:
    """The card's YAML metadata; `base_model` defaults to the ids the checkpoint's config recorded."""
    base_model = list(base_model) if base_model else recorded_base_models(config)
    tags = ["delta-llava", "llava", "vision-language", "token-efficient", "custom_code", f"visual-tokens-{budget}"]
    if config.use_object_tokens:
        tags.append("mask-llava")
    eval_results = evaluation_results_for_card(results, budget) if results else []
    return ModelCardData(
        model_name=model_name if eval_results else None,  # the name of the model-index; nothing else reads it
        license=license,
        library_name=LIBRARY_NAME,
        pipeline_tag=PIPELINE_TAG,
        tags=tags,
        base_model=base_model or None,
        datasets=list(datasets) if datasets else None,
        eval_results=eval_results or None,
    )


def _tower_description(sub_config, kind: str) -> dict[str, str]:
    name = getattr(sub_config, "_name_or_path", "")
    shape = f"`{sub_config.model_type}`, {sub_config.num_hidden_layers} layers, width {sub_config.hidden_size}"
    if kind == "vision":
        shape += f", {sub_config.image_size}-pixel images in {sub_config.patch_size}-pixel patches"
    else:
        shape += f", vocabulary of {sub_config.vocab_size}"
    label = f"`{name}`" if is_hub_model_id(name) else f"a `{sub_config.model_type}` {kind} model"
    return {"name": label, "shape": shape}


def _projector_rows(config: DeltaLlavaConfig) -> list[tuple[str, str]]:
    rows = [("projector", f"`{config.projector_type}`: {PROJECTOR_NAMES[config.projector_type]}")]
    if config.projector_type == "delta":
        if config.uses_official_layout:
            settings = (
                f"layout `official` (the authors' module): width {config.projector_hidden_size}, rank-"
                f"{config.delta_rank} updates of a separate base per query/key/value, point-to-region attention with "
                f"heads of {config.projector_head_dim}, memory layers {config.memory_layers} concatenated"
            )
        else:
            settings = (
                f"layout `shared_base`: width {config.projector_hidden_size}, rank-{config.delta_rank} updates of a "
                f"shared base, window {config.window_size}, memory layers {config.memory_layers}, FFN width "
                f"{config.ffn_hidden_size}"
            )
        rows.append(("projector settings", settings))
        switched_off = [
            name for name in ("use_emhsa", "use_delta_projection", "use_transformer_block") if not getattr(config, name)
        ]
        if switched_off:
            rows.append(("ablation", ", ".join(f"`{name}=False`" for name in switched_off)))
    rows.append(("global token", "yes (one per image)" if config.use_global_token else "no"))
    object_tokens = f"up to {config.max_object_tokens} per image, from masks" if config.use_object_tokens else "no"
    rows.append(("object tokens", object_tokens))
    return rows


def _projector_summary(config: DeltaLlavaConfig, budget: int) -> str:
    side = int(round(budget**0.5))
    if config.projector_type == "mlp2x_gelu":
        return "an MLP maps every patch to one language-model token"
    return f"a {PROJECTOR_NAMES[config.projector_type]} condenses the patches into a {side}×{side} grid of tokens"


def _flops_rows(model: InferenceFlops, baseline: InferenceFlops) -> list[dict[str, str]]:
    rows = []
    for part, attribute in FLOPS_PARTS:
        ours, theirs = getattr(model, attribute), getattr(baseline, attribute)
        ratio = f"{ours / theirs:.2f}×"
        rows.append({"part": part, "model": format_flops(ours), "baseline": format_flops(theirs), "ratio": ratio})
    return rows


def _format_score(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _evaluation_context(results: EvaluationResults, budget: int) -> dict:
    rows = []
    for question_type, type_scores in (results.at_budget(budget) or {}).items():
        majority = results.majority.get(question_type, {})
        rows.append(
            {
                "name": question_type,
                "scores": ", ".join(f"{name} {_format_score(v)}" for name, v in metric_values(type_scores).items()),
                "majority": _format_score(majority["accuracy"]) if "accuracy" in majority else "–",
                "chance": _format_score(majority["chance"]) if "chance" in majority else "–",
                "samples": type_scores.get("num_samples", "–"),
            }
        )
    other_budgets = [
        {"budget": other, "accuracy": _format_score(results.scores[other]["overall"]["accuracy"])}
        for other in results.budgets
        if other != budget and "accuracy" in results.scores[other].get("overall", {})
    ]
    return {
        "source": results.source_names,
        "dataset": results.dataset,
        "synthetic": results.dataset["type"] == SYNTHETIC_VQA["type"],
        "rows": rows,
        "other_budgets": other_budgets,
    }


def render_model_card(
    config: DeltaLlavaConfig,
    budget: int,
    model_id: str,
    cost: InferenceCost,
    results: EvaluationResults | None = None,
    training: list[TrainingRecord] = (),
    base_model: list[str] | None = None,
    datasets: list[str] | None = None,
    license: str = "other",
) -> ModelCard:
    """The README.md of the checkpoint `model_id` (a Hub id or folder) exported with `budget` as its default."""
    config.check_num_visual_tokens(budget)
    card_data = build_card_data(config, budget, model_id, results, base_model, datasets, license)
    trained_budgets = next((record.elastic_budgets for record in training if record.elastic_budgets), None)
    license_note = (
        "the weights follow the licenses of the vision tower and the language model they were built from; check "
        "those before use."
        if license == "other"
        else f"`{license}`; the licenses of the vision tower and the language model also apply."
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_id=model_id,
        budget=budget,
        grid=config.patch_grid_size,
        allowed_budgets=config.allowed_visual_token_counts(),
        trained_budgets=trained_budgets,
        vision=_tower_description(config.vision_config, "vision"),
        language=_tower_description(config.text_config, "language"),
        projector_summary=_projector_summary(config, budget),
        projector_rows=_projector_rows(config),
        use_global_token=config.use_global_token,
        use_object_tokens=config.use_object_tokens,
        max_object_tokens=config.max_object_tokens,
        text_tokens=cost.text_tokens,
        baseline_tokens=cost.num_patches,
        flops_rows=_flops_rows(cost.at_budget(budget), cost.mlp_baseline),
        evaluation=_evaluation_context(results, budget) if results else None,
        training=list(training),
        license_note=license_note,
    )
    return check_card_metadata(str(card))


def check_card_metadata(text: str) -> ModelCard:
    """Parses a card strictly (a malformed `model-index` raises) and checks the fields the Hub needs; returns it.

    The Hub's own validation (`ModelCard.validate`) needs the network; `publish` runs it before uploading.
    """
    card = ModelCard(text)
    data = card.data
    expected = {"library_name": LIBRARY_NAME, "pipeline_tag": PIPELINE_TAG}
    wrong = {key: data.get(key) for key, value in expected.items() if data.get(key) != value}
    if wrong or not data.get("license"):
        raise ValueError(
            f"Model card metadata is incomplete: expected {expected} and a license, got {wrong or data.license}."
        )
    base_models = data.base_model or []
    for name in [base_models] if isinstance(base_models, str) else base_models:
        validate_repo_id(name)
    return card


__all__ = ["render_model_card", "build_card_data", "check_card_metadata", "recorded_base_models"]
