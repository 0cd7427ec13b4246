"""Export trained Delta-LLaVA checkpoints as Hub-ready folders, one per visual token budget, and optionally push them.

    python -m delta_llava.hub_cards.export --checkpoint outputs/quickstart/checkpoint \
        --results outputs/quickstart/results.json --budgets 144 36 16 --output_dir exports \
        --repo_id_pattern "your-name/delta-llava-tiny-{budget}" [--push [--private] [--dry-run]]

One checkpoint (trained with elastic budgets, or used as is) is exported once per budget: by default every budget
of 576, 144, 64, 36, 16, 4, 1 its patch grid allows. Several checkpoints (one trained per budget) are exported at
the budget each one's config sets. Every folder holds safetensors weights (sharded above `--max_shard_size`), the
config with `auto_map` and that budget as default, the remote-code files, the processor with tokenizer and chat
template, `generation_config.json` and a model card. A folder is built in a hidden sibling directory and renamed into
place only when complete (and, with `--push`, uploaded), so a failure leaves nothing half-written.
"""

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import ModelCard
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import HfArgumentParser
from transformers.dynamic_module_utils import get_relative_import_files

from delta_llava import DeltaLlavaConfig, DeltaLlavaForConditionalGeneration
from delta_llava.processing import DeltaLlavaProcessor
from delta_llava.strict_loading import load_checkpoint_strictly

from .eval_results import EvaluationResults, load_evaluation_results
from .flops import InferenceCost
from .model_card import render_model_card
from .publish import HubPublisher, HubPublishError
from .training_record import read_training_records

logger = logging.getLogger(__name__)

PAPER_BUDGETS = (576, 144, 64, 36, 16, 4, 1)
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
REQUIRED_AUTO_CLASSES = ("AutoConfig", "AutoModelForImageTextToText", "AutoProcessor")
REQUIRED_FILES = (
    "config.json",
    "processor_config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "README.md",
)


@dataclass
class ExportArguments:
    """Command-line arguments of the export."""

    checkpoint: list[str] = field(
        metadata={
            "help": "A trained checkpoint folder, or one folder per budget (each exported at its config's budget)."
        }
    )
    output_dir: str = field(default="hub_exports", metadata={"help": "Where the exported folders go."})
    budgets: list[int] | None = field(
        default=None, metadata={"help": "Budgets to export (default: each of 576 144 64 36 16 4 1 the grid allows)."}
    )
    results: list[str] | None = field(
        default=None,
        metadata={
            "help": "Evaluation results for the cards: the quick start's results.json, or lmms-eval's "
            "<date>_results.json files (one per budget)."
        },
    )
    training_recipe: list[str] | None = field(
        default=None, metadata={"help": "The delta-llava-train YAML recipe(s) the checkpoint was trained with."}
    )
    repo_id_pattern: str | None = field(
        default=None, metadata={"help": 'Hub repo id per budget, e.g. "your-name/delta-llava-7b-{budget}".'}
    )
    push: bool = field(default=False, metadata={"help": "Upload each folder to its Hub repository."})
    dry_run: bool = field(
        default=False, metadata={"help": "Write the folders and show what --push would upload, without the network."}
    )
    private: bool = field(default=False, metadata={"help": "Create the Hub repositories as private."})
    token: str | None = field(
        default=None, metadata={"help": "Hub token (default: HF_TOKEN or the `hf auth login` one)."}
    )
    base_model: list[str] | None = field(
        default=None,
        metadata={"help": "Hub ids of the vision tower and LLM (default: as the checkpoint's config records)."},
    )
    datasets: list[str] | None = field(
        default=None, metadata={"help": "Hub ids of the training datasets, for the card."}
    )
    license: str = field(default="other", metadata={"help": "License identifier for the card metadata."})
    max_shard_size: str = field(default="5GB", metadata={"help": "Largest safetensors shard."})
    overwrite: bool = field(default=False, metadata={"help": "Replace existing export folders."})


@dataclass
class PlannedExport:
    """One folder to write: the budget, the checkpoint it comes from, where it goes and its Hub repository."""

    budget: int
    checkpoint: Path
    folder: Path
    repo_id: str | None = None
    uploaded_to: str | None = None

    @property
    def model_id(self) -> str:
        """What the card's usage snippet loads: the Hub id, or the folder name for a local export."""
        return self.repo_id or self.folder.name


def check_checkpoint_folder(checkpoint: Path) -> None:
    """Refuses a folder that is not a full saved Delta-LLaVA checkpoint, saying what is missing."""
    if not checkpoint.is_dir():
        raise FileNotFoundError(
            f"--checkpoint {checkpoint} is not a folder. Pass a folder written by delta-llava-train."
        )
    names = {path.name for path in checkpoint.iterdir()}
    if "adapter_config.json" in names and not names & set(WEIGHT_FILES):
        raise ValueError(
            f"{checkpoint} holds a LoRA adapter, not a full model. Train with --merge_lora (or load it with peft, "
            "call merge_and_unload() and save_pretrained), then export the merged folder."
        )
    missing = [name for name in ("config.json", "processor_config.json") if name not in names]
    if not names & set(WEIGHT_FILES):
        missing.append("model weights (model.safetensors)")
    if missing:
        raise ValueError(
            f"{checkpoint} is not a complete Delta-LLaVA checkpoint: missing {', '.join(missing)}. Export the folder "
            "delta-llava-train saved (model.save_pretrained + processor.save_pretrained)."
        )
    model_type = json.loads((checkpoint / "config.json").read_text()).get("model_type")
    if model_type != DeltaLlavaConfig.model_type:
        raise ValueError(
            f"{checkpoint} holds a {model_type!r} model, not {DeltaLlavaConfig.model_type!r}. Convert a LLaVA "
            "checkpoint with delta_llava.convert_llava_to_delta_llava (or train with --llava_checkpoint) first."
        )


def default_budgets(config: DeltaLlavaConfig) -> list[int]:
    """The paper's budgets (576, 144, 64, 36, 16, 4, 1) that the patch grid allows, or else every budget it allows."""
    allowed = config.allowed_visual_token_counts()
    return [budget for budget in PAPER_BUDGETS if budget in allowed] or allowed


def budgets_per_checkpoint(checkpoints: list[Path], budgets: list[int] | None) -> dict[int, Path]:
    """Maps each requested budget to the checkpoint that serves it; an impossible budget is a ValueError."""
    configs = {checkpoint: DeltaLlavaConfig.from_pretrained(checkpoint) for checkpoint in checkpoints}
    if len(checkpoints) == 1:
        ((checkpoint, config),) = configs.items()
        for budget in budgets or []:
            config.check_num_visual_tokens(budget, field="--budgets")
        return {budget: checkpoint for budget in budgets or default_budgets(config)}
    served = {}
    for checkpoint, config in configs.items():
        budget = config.num_visual_tokens
        if budget in served:
            raise ValueError(
                f"{served[budget]} and {checkpoint} both default to {budget} visual tokens; pass one folder per budget."
            )
        served[budget] = checkpoint
    unserved = [budget for budget in budgets or [] if budget not in served]
    if unserved:
        raise ValueError(
            f"--budgets {unserved} match no checkpoint; the checkpoints default to {sorted(served, reverse=True)}."
        )
    return {budget: served[budget] for budget in budgets or served}


def check_results_budgets(evaluation: EvaluationResults, checkpoints: set[Path]) -> None:
    """A results file scored at a budget no checkpoint can serve would put numbers on the cards that no export
    reproduces: refused, naming the budgets."""
    servable = set()
    for checkpoint in checkpoints:
        servable.update(DeltaLlavaConfig.from_pretrained(checkpoint).allowed_visual_token_counts())
    impossible = sorted(set(evaluation.budgets) - servable, reverse=True)
    if impossible:
        raise ValueError(
            f"--results {evaluation.source_names} has scores at {impossible} visual tokens, which the checkpoint(s) "
            f"cannot serve (they serve {sorted(servable, reverse=True)}): pass the results of an evaluation of these "
            "checkpoints."
        )


def plan_exports(
    checkpoints: list[str | Path],
    output_dir: str | Path,
    budgets: list[int] | None = None,
    repo_id_pattern: str | None = None,
    overwrite: bool = False,
) -> list[PlannedExport]:
    """Checks everything that can be checked before writing, and returns the folders to write."""
    checkpoints = [Path(checkpoint) for checkpoint in checkpoints]
    if not checkpoints:
        raise ValueError("Pass at least one --checkpoint folder.")
    for checkpoint in checkpoints:
        check_checkpoint_folder(checkpoint)
    sources = budgets_per_checkpoint(checkpoints, budgets)
    if repo_id_pattern is not None and len(sources) > 1 and "{budget}" not in repo_id_pattern:
        raise ValueError(
            f"--repo_id_pattern {repo_id_pattern!r} needs a {{budget}} field: every budget gets its own repository."
        )
    plans = []
    for budget, checkpoint in sources.items():
        try:
            repo_id = repo_id_pattern.format(budget=budget) if repo_id_pattern else None
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(
                f"--repo_id_pattern {repo_id_pattern!r} may only use the {{budget}} field ({error!r})."
            ) from error
        if repo_id is not None:
            try:
                validate_repo_id(repo_id)
            except HFValidationError as error:
                raise ValueError(f"--repo_id_pattern gives {repo_id!r}, not a Hub repository id ({error}).") from error
        name = repo_id.split("/")[-1] if repo_id else f"{checkpoint.resolve().name}-{budget}"
        plans.append(
            PlannedExport(budget=budget, checkpoint=checkpoint, folder=Path(output_dir) / name, repo_id=repo_id)
        )
    existing = [str(plan.folder) for plan in plans if plan.folder.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"Export folders already exist: {existing}. Pass --overwrite to replace them.")
    return plans


def check_export_folder(folder: Path, budget: int) -> None:
    """Checks that a written folder loads on its own: files, default budgets, auto_map and every remote-code file."""
    names = {path.name for path in folder.iterdir()}
    problems = [f"no {name}" for name in REQUIRED_FILES if name not in names]
    if problems:
        raise RuntimeError(f"The export in {folder} is incomplete: {'; '.join(problems)}.")
    config = json.loads((folder / "config.json").read_text())
    processor_config = json.loads((folder / "processor_config.json").read_text())
    for name, saved in (("config.json", config), ("processor_config.json", processor_config)):
        if saved.get("num_visual_tokens") != budget:
            problems.append(f"{name} defaults to {saved.get('num_visual_tokens')} visual tokens, not {budget}")
    auto_map = {**config.get("auto_map", {}), **processor_config.get("auto_map", {})}
    problems += [f"auto_map has no {name}" for name in REQUIRED_AUTO_CLASSES if name not in auto_map]
    for module in sorted({reference.split(".")[0] + ".py" for reference in auto_map.values()}):
        try:
            for dependency in [folder / module, *map(Path, get_relative_import_files(folder / module))]:
                if not dependency.is_file():
                    problems.append(f"no remote-code file {dependency.name}")
        except FileNotFoundError as error:
            problems.append(f"no remote-code file {Path(error.filename).name}")
    if "model.safetensors.index.json" in names:
        shards = set(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values())
        problems += [f"no weight shard {shard}" for shard in sorted(shards - names)]
    elif "model.safetensors" not in names:
        problems.append("no safetensors weights")
    if "chat_template.jinja" not in names and "chat_template" not in processor_config:
        problems.append("no chat template")
    if problems:
        raise RuntimeError(f"The export in {folder} is incomplete: {'; '.join(problems)}.")


def move_into_place(staging: Path, destination: Path) -> None:
    """Renames a finished staging folder to `destination`, replacing an older export only once the new one is whole."""
    if not destination.exists():
        os.replace(staging, destination)
        return
    retired = destination.with_name(f".{destination.name}.replaced-{uuid.uuid4().hex[:8]}")
    os.replace(destination, retired)
    os.replace(staging, destination)
    shutil.rmtree(retired)


def export_checkpoints(
    checkpoints: list[str | Path],
    output_dir: str | Path,
    budgets: list[int] | None = None,
    *,
    results: str | Path | list[str | Path] | None = None,
    training_recipes: list[str | Path] = (),
    repo_id_pattern: str | None = None,
    push: bool = False,
    dry_run: bool = False,
    private: bool = False,
    token: str | None = None,
    base_model: list[str] | None = None,
    datasets: list[str] | None = None,
    license: str = "other",
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
) -> list[PlannedExport]:
    """Writes one Hub-ready folder per budget (see the module docstring) and, with `push`, uploads each one.

    Returns the written exports (`uploaded_to` holds the repository URL of each uploaded one). Invalid budgets,
    incomplete checkpoints, unreadable results and, with `push`, a missing or rejected token are refused before
    anything is written. A failure while writing or uploading one folder removes that folder's staging directory;
    the folders finished before it stay in place.
    """
    if push and not repo_id_pattern:
        raise ValueError('--push needs --repo_id_pattern, e.g. "your-name/delta-llava-7b-{budget}".')
    plans = plan_exports(checkpoints, output_dir, budgets, repo_id_pattern, overwrite)
    evaluation = load_evaluation_results(results) if results else None
    if evaluation is not None:
        check_results_budgets(evaluation, {plan.checkpoint for plan in plans})
    training = read_training_records(training_recipes, evaluation)
    publisher = None
    if push and not dry_run:
        publisher = HubPublisher(token=token, private=private)
        logger.info("Publishing as %s", publisher.check_access())

    output_dir = Path(output_dir)
    created_output_dir = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)
    done = []
    try:
        for checkpoint in dict.fromkeys(plan.checkpoint for plan in plans):
            logger.info("Loading %s", checkpoint)
            model = load_checkpoint_strictly(checkpoint, dtype="auto")
            # The classes are this project's: the checkpoint's own copy of the code is not run.
            processor = DeltaLlavaProcessor.from_pretrained(checkpoint, trust_remote_code=False)
            cost = InferenceCost(model.config)
            for plan in [plan for plan in plans if plan.checkpoint == checkpoint]:
                logger.info("[%d/%d] %d visual tokens -> %s", len(done) + 1, len(plans), plan.budget, plan.folder)
                card = render_model_card(
                    model.config, plan.budget, plan.model_id, cost, evaluation, training, base_model, datasets, license
                )
                write_budget_folder(model, processor, card, plan, max_shard_size, publisher, dry_run_push=push)
                done.append(plan)
    except HubPublishError as error:
        if done:
            finished = ", ".join(str(plan.budget) for plan in done)
            raise HubPublishError(
                f"{error} Budgets {finished} were exported and uploaded before this failure."
            ) from error
        raise
    finally:
        if created_output_dir and not any(output_dir.iterdir()):
            output_dir.rmdir()
    return done


def write_budget_folder(
    model: DeltaLlavaForConditionalGeneration,
    processor: DeltaLlavaProcessor,
    card: ModelCard,
    plan: PlannedExport,
    max_shard_size: str | int,
    publisher: HubPublisher | None = None,
    dry_run_push: bool = False,
) -> None:
    """Builds `plan.folder` in a staging sibling, checks it, uploads it (with a publisher; `dry_run_push` only lists
    what would go up) and renames it into place. On any failure the staging folder is removed."""
    staging = plan.folder.with_name(f".{plan.folder.name}.partial-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        model.config.num_visual_tokens = processor.num_visual_tokens = plan.budget
        model.save_pretrained(staging, max_shard_size=max_shard_size)
        processor.save_pretrained(staging)
        card.save(staging / "README.md")
        check_export_folder(staging, plan.budget)
        if publisher:
            message = f"Delta-LLaVA with {plan.budget} visual tokens per image by default"
            plan.uploaded_to = publisher.publish(staging, plan.repo_id, message)
            logger.info("Uploaded %s", plan.uploaded_to)
        elif dry_run_push:
            files = sorted(path.name for path in staging.iterdir())
            logger.info("Dry run: would upload %d files to %s: %s", len(files), plan.repo_id, ", ".join(files))
        move_into_place(staging, plan.folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(ExportArguments, description=__doc__.split("\n")[0]).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        exports = export_checkpoints(
            args.checkpoint,
            args.output_dir,
            args.budgets,
            results=args.results,
            training_recipes=args.training_recipe or [],
            repo_id_pattern=args.repo_id_pattern,
            push=args.push,
            dry_run=args.dry_run,
            private=args.private,
            token=args.token,
            base_model=args.base_model,
            datasets=args.datasets,
            license=args.license,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
        )
    except HubPublishError as error:
        raise SystemExit(f"error: {error}") from None
    for export in exports:
        print(
            f"{export.budget:>4} visual tokens: {export.folder}"
            + (f" -> {export.uploaded_to}" if export.uploaded_to else "")
        )


__all__ = ["export_checkpoints", "plan_exports", "check_export_folder", "ExportArguments", "PlannedExport"]


if __name__ == "__main__":
    main()
