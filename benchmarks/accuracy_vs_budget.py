"""Accuracy vs visual token budget on the synthetic VQA test split (the paper's figure 4), every row trained alike.

    python benchmarks/accuracy_vs_budget.py --workers 2 --max_steps 1000 --budgets 144 36 16 9 4 1 \
        --baseline_budgets 36 16 4 1            # every row once (seed 0); ~75 min on 2 cores
    bash benchmarks/accuracy_table.sh           # the README's table: that, the seeds, then merge_accuracy_runs.py
    python benchmarks/accuracy_vs_budget.py --rows delta mlp --budgets 36 4 --seeds 0 \
        --train_samples 200 --test_samples 60 --max_steps 20 --warmup_steps 20 --results_name accuracy_smoke

The shared parts are built once, as in the quick start (`delta_llava.training.quickstart`): the synthetic train and
test sets (fixed data seed), the word-level tokenizer, the small CLIP-style tower warmed up on per-cell labels and
then frozen, and the small random Llama, saved to disk. Every training run starts from those same saved weights,
trains its own projector + LLM through `delta_llava.training.train.train` (TRL's SFTTrainer) with the frozen
tower's features cached, for the same `--max_steps`, batch, learning rate and schedule; only the training seed
(projector initialisation, data order, elastic draws) changes between seeds. Rows (`--rows`):

- delta: the Delta projector in the shared_base layout (this project's reading of the paper's text), one checkpoint
  per budget in `--budgets` (default 144 36 16 4 1, the issue's list,
  keeping the budgets the patch grid allows: g*g with g dividing the grid; the 12x12 grid of the default
  96 px / 8 px patches allows 144 36 16 9 4 1, so 144 is its full grid and 64 is impossible; a 24x24 grid, e.g.
  `--image_size 192 --patch_size 8`, allows 576 144 64 36 16 9 4 1);
- official: the Delta projector in the official layout (the authors' module), at the same budgets as delta;
- mlp: LLaVA-1.5's MLP at the full grid (144 on 12x12, 576 on 24x24);
- tokenpacker, avgpool: the baselines at the same budgets as delta, or at `--baseline_budgets`;
- ablations (shared_base): the paper's three (no EMHSA, no DeltaProjection, no transformer block) at `--ablation_budget`
  (default: the largest allowed budget below the full grid: 36 on 12x12, 144 on 24x24); the delta row at that
  budget is the full model;
- elastic (shared_base): one Delta checkpoint trained with `elastic_budgets` = the delta budgets, evaluated at each of them;
- objects (shared_base): Mask-LLaVA object tokens on a Delta checkpoint at `--object_budget`. The synthetic set has no masks, so
  they are built from the scene layout: each non-empty grid cell's box is one object mask, objects ordered by their
  drawn (non-background) pixel count, largest first (ties: reading order), then the background (the empty cells).
  Trained with every mask kept, then evaluated keeping k = all, half, a quarter and none of them. The object features
  are mask pooling (the patch features averaged under each mask);
- objects_inversion: the same with Mask-LLaVA's MaskInversion features (`processing.MaskInversion`, default settings:
  the last layer's LeGrad map, 10 AdamW steps at lr 0.5), precomputed once per scene. The warmed-up tower has no
  projection head, so it is given an identity one: `CLIPVisionModelWithProjection` with the tower's weights and
  `visual_projection` = the 64x64 identity, i.e. the embeddings live in the tower's own width and LeGrad's similarity
  is the cosine between an embedding and the summed layer's output tokens, averaged, after the tower's post-layernorm
  (the warm-up trained the patch tokens, so that mean says what is in the scene; the class token was never trained).

Dense scenes (issue 31's VQA measure): `--image_size 192 --patch_size 8 --scene_grid 8 --max_objects 30
--question_types attribute position count existence` asks about 8x8 scenes of up to 30 small shapes (cells named
"row3 col5"; counts up to 30) on the paper's 24x24 patch grid; text and caption are left out (the generator prints
one word per scene, and a caption of 30 shapes is a ~150-word answer).

Seeds (`--seeds`) apply to the row groups in `--seeded_rows` (default delta mlp ablations, whose differences are the
small ones); the other groups run with the first seed. Every row records its wall time (its checkpoint's training
plus its own evaluation), the accuracy per question type beside the majority-answer level of the test split, and
whether it learned: overall accuracy above the overall majority level + `--learned_margin`.

Object masks reach training and evaluation as the library passes them: an `object_masks` column (per row, one
stack per image) that `ObjectMaskCollator` (inside `train()`) and `evaluate_budget` hand to the processor.

Writes benchmarks/results/<results_name>.json and .png (default accuracy_vs_budget) after every training run, so a run
cut short keeps its rows (`training_runs_done` says how far it got), prints the table at the end, and after the
first training run prints an estimate of the whole run's wall time.
"""

import argparse
import gc
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # per-batch progress bars of 30+ runs; one line per run is printed instead

import datasets  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from datasets import Array2D, List  # noqa: E402
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection  # noqa: E402
from trl import SFTConfig  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import measure  # noqa: E402
from delta_llava.configuration_delta_llava import allowed_visual_token_counts  # noqa: E402
from delta_llava.processing.object_mask_inputs import append_background_mask, compact_mask_stack  # noqa: E402
from delta_llava.processing.mask_inversion import MaskInversion  # noqa: E402
from delta_llava.processing.precompute_object_embeddings import (  # noqa: E402
    OBJECT_EMBEDDINGS_COLUMN,
    precompute_object_embeddings,
)
from delta_llava.processing.precompute_object_masks import OBJECT_MASKS_COLUMN, object_masks_feature  # noqa: E402
from delta_llava.training.arguments import DeltaLlavaDataArguments, DeltaLlavaModelArguments  # noqa: E402
from delta_llava.training.evaluate_vqa import evaluate_budget  # noqa: E402
from delta_llava.training.object_mask_collator import OBJECT_COLUMNS  # noqa: E402
from delta_llava.training.quickstart import (  # noqa: E402
    small_projector,
    QuickStartArguments,
    build_language_model,
    build_tokenizer,
    build_vision_tower,
    small_training_config,
)
from delta_llava.training.synthetic_vqa import (  # noqa: E402
    BACKGROUND,
    QUESTION_TYPES,
    make_synthetic_vqa,
    question_text,
    split_words,
)
from delta_llava.training.train import train  # noqa: E402
from delta_llava.training.vision_feature_cache import cached_vision_tower  # noqa: E402
from delta_llava.training.vqa_metrics import majority_baseline  # noqa: E402

QUICK_START = QuickStartArguments()  # every training setting defaults to the quick start's
ROW_GROUPS = ("delta", "official", "mlp", "tokenpacker", "avgpool", "ablations", "elastic", "objects", "objects_inversion")
OBJECT_ROWS = {"objects": "objects", "objects_inversion": "objects MaskInversion"}  # group -> series label
ISSUE_BUDGETS = [144, 36, 16, 4, 1]
ABLATIONS = {
    "no EMHSA": {"use_emhsa": False},
    "no DeltaProjection": {"use_delta_projection": False},
    "no transformer block": {"use_transformer_block": False},
}
PROJECTOR_TYPES = {
    "delta": "delta", "official": "delta", "mlp": "mlp2x_gelu", "tokenpacker": "tokenpacker", "avgpool": "avgpool"
}
SERIES_LABELS = {"official": "delta official"}  # a group's row label when it is not the group's name
TEMPLATE_TOKENS = 6  # BOS, "USER:", ":" ..., "ASSISTANT:", EOS around question and answer (for the time estimate)


# ----------------------------------------------------------------------------------------------- object masks


def cell_box(index: int, grid_size: int, image_size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) pixel box of cell `index` (row-major), on the edges `render_scene` draws with."""
    edges = [round(step * image_size / grid_size) for step in range(grid_size + 1)]
    row, column = divmod(index, grid_size)
    return edges[column], edges[row], edges[column + 1], edges[row + 1]


def scene_mask_stack(cell_labels: list[int], image) -> torch.Tensor:
    """One scene's full-size mask stack (K + 1, H, W), bool: the K non-empty cells' boxes, then the background.

    Objects are ordered by their drawn pixel count (pixels differing from the background colour inside the cell),
    largest first, ties in reading order; the background mask is the empty cells (`append_background_mask`).
    """
    grid_size = math.isqrt(len(cell_labels))
    if grid_size * grid_size != len(cell_labels):
        raise ValueError(f"cell_labels has {len(cell_labels)} entries, not a square grid.")
    pixels = np.asarray(image.convert("RGB"))
    height, width = pixels.shape[:2]
    if height != width:
        raise ValueError(f"synthetic scenes are square; got an image of {width}x{height}.")
    drawn = np.any(pixels != np.array(BACKGROUND, dtype=pixels.dtype), axis=-1)
    objects = []
    for index, label in enumerate(cell_labels):
        if label == 0:  # CELL_LABEL_NAMES[0] == "empty"
            continue
        left, top, right, bottom = cell_box(index, grid_size, width)
        mask = np.zeros((height, width), dtype=bool)
        mask[top:bottom, left:right] = True
        objects.append((-int(drawn[top:bottom, left:right].sum()), index, mask))
    objects.sort(key=lambda item: item[:2])
    stack = np.stack([mask for *_, mask in objects]) if objects else np.zeros((0, height, width), dtype=bool)
    return append_background_mask(torch.from_numpy(stack))


def with_object_masks(dataset: datasets.Dataset, mask_size: int) -> datasets.Dataset:
    """The dataset plus an `object_masks` column as `precompute_object_masks` writes it: per row, a list with the
    image's stack in the compact uint8 form (K + 1, S, S)."""
    features = dataset.features.copy()
    features[OBJECT_MASKS_COLUMN] = object_masks_feature(mask_size)

    def add_masks(row: dict) -> dict:
        stack = compact_mask_stack(scene_mask_stack(row["cell_labels"], row["images"][0]), mask_size)
        return {OBJECT_MASKS_COLUMN: [np.asarray(stack)]}

    return dataset.map(add_masks, features=features, desc="object masks from the scene layout")


def tower_with_identity_projection(tower_folder: Path, output_folder: Path) -> CLIPVisionModelWithProjection:
    """The warmed-up tower as a `CLIPVisionModelWithProjection` whose projection is the identity (projection_dim =
    the tower's width), saved to `output_folder`: MaskInversion's joint space is then the tower's own."""
    width = CLIPVisionConfig.from_pretrained(tower_folder).hidden_size
    with_projection, loading = CLIPVisionModelWithProjection.from_pretrained(
        tower_folder, projection_dim=width, output_loading_info=True
    )
    if set(loading["missing_keys"]) != {"visual_projection.weight"} or loading["unexpected_keys"]:
        raise RuntimeError(f"The tower in {tower_folder} did not load whole into the projection model: {loading}")
    config = with_projection.config
    with torch.no_grad():
        with_projection.visual_projection.weight.copy_(torch.eye(config.hidden_size))
    with_projection.eval().save_pretrained(output_folder)
    return with_projection


def with_object_embeddings(
    dataset: datasets.Dataset, inverter: MaskInversion, image_processor, rows_per_scene: int
) -> datasets.Dataset:
    """`dataset` (with `object_masks`) with the masks replaced by their MaskInversion embeddings, as
    `precompute_object_embeddings` writes them, inverted once per scene: `rows_per_scene` consecutive rows share one
    scene (the training set asks two questions per scene)."""
    scenes = dataset.select(range(0, len(dataset), rows_per_scene))
    embeddings = precompute_object_embeddings(scenes, inverter, image_processor)[OBJECT_EMBEDDINGS_COLUMN]
    features = dataset.features.copy()
    del features[OBJECT_MASKS_COLUMN]
    features[OBJECT_EMBEDDINGS_COLUMN] = List(Array2D(shape=(None, inverter.model.config.projection_dim), dtype="float32"))
    return dataset.remove_columns(OBJECT_MASKS_COLUMN).map(
        lambda row, index: {OBJECT_EMBEDDINGS_COLUMN: embeddings[index // rows_per_scene]},
        with_indices=True,
        features=features,
        desc="MaskInversion embeddings per row",
    )


# ----------------------------------------------------------------------------------------------- the plan


@dataclass
class Evaluation:
    label: str  # the row's series name, e.g. "delta", "elastic", "no EMHSA", "objects"
    budget: int
    max_object_tokens: int | None = None
    k_name: str | None = None  # all / half / quarter / none for object-token rows


@dataclass
class Job:
    """One training run (one checkpoint) and the evaluations made with it."""

    group: str
    name: str
    projector_type: str
    budget: int
    seed: int
    evaluations: list[Evaluation]
    overrides: dict = field(default_factory=dict)
    elastic_budgets: list[int] | None = None
    use_object_tokens: bool = False
    max_object_tokens: int | None = None
    delta_layout: str = "shared_base"  # the layout every delta row before the official one was measured with


def grid_budgets(args) -> dict:
    """The patch grid and which budgets it allows; the delta, ablation and object budgets."""
    if args.image_size % args.patch_size:
        raise ValueError(f"--image_size {args.image_size} is not a multiple of --patch_size {args.patch_size}.")
    grid = args.image_size // args.patch_size
    allowed = allowed_visual_token_counts(grid)
    requested = args.budgets or ISSUE_BUDGETS
    budgets = [b for b in requested if b in allowed]
    dropped = [b for b in requested if b not in allowed]
    if args.budgets and dropped:
        raise ValueError(f"--budgets {dropped} are impossible on the {grid}x{grid} patch grid; allowed: {allowed}.")
    if not budgets:
        raise ValueError(f"none of the budgets {requested} fits the {grid}x{grid} patch grid; allowed: {allowed}.")
    baseline_budgets = args.baseline_budgets or budgets
    outside = [b for b in baseline_budgets if b not in allowed]
    if outside:
        raise ValueError(f"--baseline_budgets {outside} are impossible on the {grid}x{grid} patch grid; allowed: {allowed}.")
    below_full = [b for b in allowed if b < grid * grid]
    ablation_budget = args.ablation_budget or (below_full[0] if below_full else grid * grid)
    object_budget = args.object_budget or min((b for b in budgets if b > 1), default=budgets[-1])
    for name, value in (("--ablation_budget", ablation_budget), ("--object_budget", object_budget)):
        if value not in allowed:
            raise ValueError(f"{name} {value} is impossible on the {grid}x{grid} patch grid; allowed: {allowed}.")
    return {
        "patch_grid": grid,
        "allowed_budgets": allowed,
        "budgets": budgets,
        "baseline_budgets": baseline_budgets,
        "dropped_budgets": dropped,
        "full_grid": grid * grid,
        "ablation_budget": ablation_budget,
        "object_budget": object_budget,
    }


def object_token_counts(max_masks: int) -> dict[str, int]:
    """k for all / half / a quarter / none of the masks, as counts of the largest stack (ceil, so half of 5 is 3)."""
    return {"all": max_masks, "half": math.ceil(max_masks / 2), "quarter": math.ceil(max_masks / 4), "none": 0}


def plan_jobs(args, grid: dict, max_masks: int, inversion_width: int | None = None) -> list[Job]:
    """Every training run, row groups in the order of `--rows`; the first run is the time estimate's base.
    `inversion_width`: the MaskInversion embeddings' width E (objects_inversion rows)."""
    jobs = []
    budgets = grid["budgets"]

    def seeds_for(group: str) -> list[int]:
        return args.seeds if group in args.seeded_rows else args.seeds[:1]

    for group in dict.fromkeys(args.rows):  # in the order given, so a cut-short run has the rows asked first
        for seed in seeds_for(group):
            if group in ("delta", "official", "tokenpacker", "avgpool"):
                layout = "official" if group == "official" else "shared_base"
                label = SERIES_LABELS.get(group, group)
                for budget in budgets if group in ("delta", "official") else grid["baseline_budgets"]:
                    jobs.append(
                        Job(group, f"{group}_b{budget}_s{seed}", PROJECTOR_TYPES[group], budget, seed,
                            [Evaluation(label, budget)], delta_layout=layout)
                    )
            elif group == "mlp":
                budget = grid["full_grid"]
                jobs.append(
                    Job(group, f"mlp_b{budget}_s{seed}", "mlp2x_gelu", budget, seed, [Evaluation("mlp", budget)])
                )
            elif group == "ablations":
                budget = grid["ablation_budget"]
                for label, overrides in ABLATIONS.items():
                    slug = label.replace(" ", "_")
                    jobs.append(
                        Job(group, f"{slug}_b{budget}_s{seed}", "delta", budget, seed, [Evaluation(label, budget)],
                            overrides=overrides)
                    )
            elif group == "elastic":
                jobs.append(
                    Job(group, f"elastic_s{seed}", "delta", max(budgets), seed,
                        [Evaluation("elastic", budget) for budget in budgets], elastic_budgets=list(budgets))
                )
            elif group in OBJECT_ROWS:
                budget = grid["object_budget"]
                counts = object_token_counts(max_masks)
                evaluations = [Evaluation(OBJECT_ROWS[group], budget, k, name) for name, k in counts.items()]
                overrides = {}
                if group == "objects_inversion":  # the inverter's tower and its default settings, recorded in the config
                    overrides = {"object_features": "mask_inversion", "object_embedding_dim": inversion_width,
                                 "mask_inversion": json.dumps({"source": str(Path(args.output_dir) / "inversion_tower")})}
                jobs.append(
                    Job(group, f"{group}_b{budget}_s{seed}", "delta", budget, seed, evaluations, overrides=overrides,
                        use_object_tokens=True, max_object_tokens=max_masks)
                )
    return jobs


# ----------------------------------------------------------------------------------------------- shared parts


def build_shared(args, grid: dict, work: Path) -> dict:
    """Data, tokenizer, warmed-up tower and random LM, built once; every job starts from these saved folders."""
    started = time.time()
    timings = {}

    def lap(name: str) -> None:
        timings[name] = round(time.time() - started - sum(timings.values()), 1)
        print(f"[{time.time() - started:6.0f}s] {name} done", flush=True)

    scenes = {
        "image_size": args.image_size,
        "grid_size": args.scene_grid,
        "max_objects": args.max_objects,
        "question_types": args.question_types,
    }
    train_set = make_synthetic_vqa(args.train_samples, seed=args.data_seed, questions_per_scene=2, **scenes)
    test_set = make_synthetic_vqa(args.test_samples, seed=args.data_seed + 1000, **scenes)
    train_set.save_to_disk(str(work / "data" / "train"))
    lap("synthetic data")

    max_masks, object_test_sets = 0, {}
    if set(OBJECT_ROWS) & set(args.rows):
        mask_size = grid["patch_grid"]  # the model pools masks onto the patch grid; the processor resizes them
        train_objects = with_object_masks(train_set, mask_size)
        train_objects.save_to_disk(str(work / "data" / "train_objects"))
        object_test_sets["objects"] = with_object_masks(test_set, mask_size)
        stacks = [*train_objects["object_masks"], *object_test_sets["objects"]["object_masks"]]
        max_masks = max(len(image_stacks[0]) for image_stacks in stacks)
        lap("object masks")

    tokenizer = build_tokenizer(work / "language_model", grid_size=args.scene_grid, max_objects=args.max_objects)
    build_language_model(
        work / "language_model", tokenizer, args.language_model_layers, args.language_model_heads,
        seed=args.data_seed,
    )
    tower_args = QuickStartArguments(
        output_dir=str(work),
        image_size=args.image_size,
        patch_size=args.patch_size,
        warmup_steps=args.warmup_steps,
        warmup_learning_rate=args.warmup_learning_rate,
        seed=args.data_seed,
    )
    warmup_losses = build_vision_tower(work / "vision_tower", tower_args, train_set)
    lap("vision tower warm-up")
    inversion_width = None
    if "objects_inversion" in args.rows:
        inverter = MaskInversion(tower_with_identity_projection(work / "vision_tower", work / "inversion_tower"))
        image_processor = CLIPImageProcessorPil.from_pretrained(work / "vision_tower")
        inversion_width = inverter.model.config.projection_dim
        with_embeddings = partial(with_object_embeddings, inverter=inverter, image_processor=image_processor)
        with_embeddings(train_objects, rows_per_scene=2).save_to_disk(str(work / "data" / "train_objects_inversion"))
        object_test_sets["objects_inversion"] = with_embeddings(object_test_sets["objects"], rows_per_scene=1)
        lap("MaskInversion embeddings")
    tail = warmup_losses[-20:]
    text_tokens = statistics.fmean(
        len(split_words(question_text(messages))) + len(split_words(answer)) + TEMPLATE_TOKENS
        for messages, answer in zip(train_set["messages"], train_set["answer"])
    )
    return {
        "work": work,
        "test_set": test_set,
        "object_test_sets": object_test_sets,
        "max_masks": max_masks,
        "inversion_width": inversion_width,
        "majority": majority_baseline(test_set),
        "timings_s": timings,
        "warmup_final_loss": sum(tail) / max(len(tail), 1),
        "mean_text_tokens": text_tokens,
    }


# ----------------------------------------------------------------------------------------------- one job


def model_arguments(job: Job, work: Path) -> DeltaLlavaModelArguments:
    settings = {
        "vision_tower": str(work / "vision_tower"),
        "language_model": str(work / "language_model"),
        "stage": "finetune",
        "projector_type": job.projector_type,
        "vision_feature_layer": -1,
        "num_visual_tokens": job.budget,
        "elastic_budgets": job.elastic_budgets,
        "cache_vision_features": True,
        "use_object_tokens": job.use_object_tokens,
        **small_projector(job.projector_type, job.delta_layout),
        **job.overrides,
    }
    if job.max_object_tokens is not None:
        settings["max_object_tokens"] = job.max_object_tokens
    return DeltaLlavaModelArguments(**settings)


def training_config(args, job: Job, work: Path) -> SFTConfig:
    """The quick start's SFTConfig with a fixed number of steps; only the seed differs between rows."""
    return small_training_config(
        str(work / "checkpoints" / job.name), args.max_steps, args.batch_size, args.learning_rate, job.seed,
        logging_steps=max(1, args.max_steps // 5), disable_tqdm=True,
    )  # fmt: skip


def run_job(args, job: Job, shared: dict) -> tuple[dict, list[dict]]:
    """Trains one checkpoint and evaluates it; returns its record and one row per evaluation."""
    work = shared["work"]
    data = work / "data" / {"objects": "train_objects", "objects_inversion": "train_objects_inversion"}.get(job.group, "train")
    started = time.time()
    data_args = DeltaLlavaDataArguments(dataset_path=str(data))
    trainer = train(model_arguments(job, work), data_args, training_config(args, job, work))
    train_s = time.time() - started
    model, processor = trainer.model, trainer.processing_class
    config = model.config
    checkpoint = {
        "name": job.name,
        "group": job.group,
        "projector_type": job.projector_type,
        "train_budget": job.budget,
        "elastic_budgets": job.elastic_budgets,
        "seed": job.seed,
        "settings": job.overrides,
        "use_object_tokens": job.use_object_tokens,
        "max_steps": trainer.state.global_step,
        "train_s": round(train_s, 1),
        "steps_per_s": round(trainer.state.global_step / train_s, 2),
        "train_loss": trainer.state.log_history[-1].get("train_loss"),
        "path": str(Path(trainer.args.output_dir)),
    }
    test_set = shared["object_test_sets"].get(job.group, shared["test_set"])
    object_column = next((name for name in OBJECT_COLUMNS if name in test_set.column_names), None)
    majority = shared["majority"]
    rows = []
    with cached_vision_tower(model.model.vision_tower, [config.vision_feature_layer, *config.memory_layers]):
        for evaluation in job.evaluations:
            eval_started = time.time()
            scores = evaluate_budget(
                model, processor, test_set, evaluation.budget, args.eval_batch_size, evaluation.max_object_tokens
            )["scores"]
            tokens, object_tokens = evaluation.budget, None
            if evaluation.max_object_tokens is not None:
                object_tokens = statistics.fmean(
                    min(len(stacks[0]), evaluation.max_object_tokens) for stacks in test_set[object_column]
                )
                tokens = evaluation.budget + object_tokens
            eval_s = time.time() - eval_started
            overall = scores["overall"]["accuracy"]
            level = majority["overall"]["accuracy"]
            rows.append(
                {
                    "checkpoint": job.name,
                    "group": job.group,
                    "label": evaluation.label,
                    "projector_type": job.projector_type,
                    "budget": evaluation.budget,
                    "max_object_tokens": evaluation.max_object_tokens,
                    "object_tokens_kept": evaluation.k_name,
                    "mean_object_tokens": object_tokens,
                    "tokens": tokens,
                    "seed": job.seed,
                    "train_s": round(train_s, 3),  # ms: a tiny run's evaluation can take under 0.05 s
                    "train_shared_by_rows": len(job.evaluations),
                    "eval_s": round(eval_s, 3),
                    "wall_s": round(train_s + eval_s, 3),
                    "accuracy": {name: score["accuracy"] for name, score in scores.items()},
                    "majority": {name: score["accuracy"] for name, score in majority.items()},
                    "learned": overall > level + args.learned_margin,
                    "scores": scores,
                }
            )
    del trainer, model
    gc.collect()
    return checkpoint, rows


def run_jobs(args, jobs: list[Job], shared: dict):
    """Yields (job, checkpoint record, rows) as the jobs finish. With `--workers` N > 1 they run N at a time in
    spawned processes, each with an equal share of the CPU cores as torch threads (small models use cores poorly,
    so two one-thread jobs beat one two-thread job)."""
    if args.workers == 1:
        for job in jobs:
            yield job, *run_job(args, job, shared)
        return
    threads = max(1, (args.threads or os.cpu_count() or 1) // args.workers)
    context = multiprocessing.get_context("spawn")  # a forked child of a process that ran OpenMP threads can hang
    with ProcessPoolExecutor(args.workers, mp_context=context, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        futures = {pool.submit(run_job, args, job, shared): job for job in jobs}
        for future in as_completed(futures):
            yield futures[future], *future.result()


# ----------------------------------------------------------------------------------------------- estimate


def job_tokens(job: Job, max_masks: int) -> float:
    budget = statistics.fmean(job.elastic_budgets) if job.elastic_budgets else job.budget
    return budget + (max_masks if job.use_object_tokens else 0)


def estimate_run(
    jobs: list[Job], first_job: Job, first: dict, first_rows: list[dict], shared: dict, workers: int
) -> dict:
    """The whole run's wall time from the first job to finish: a range between two cost models.

    `proportional`: training and evaluation time scale with the sequence length (text + visual tokens) relative
    to the first job; `flat`: every job costs what the first did per training run and per evaluation. Small
    budgets carry a fixed per-step overhead (collation, image processing, optimizer), so the truth lies between.
    With several workers the jobs' time is shared among them.
    """
    text = shared["mean_text_tokens"]
    base_tokens = job_tokens(first_job, shared["max_masks"]) + text
    eval_s = statistics.fmean(row["eval_s"] for row in first_rows)
    proportional = flat = 0.0
    for job in jobs:
        scale = (job_tokens(job, shared["max_masks"]) + text) / base_tokens
        job_s = first["train_s"] + eval_s * len(job.evaluations)
        proportional += scale * job_s
        flat += job_s
    setup_s = sum(shared["timings_s"].values())
    low, high = sorted([proportional / workers, flat / workers])
    return {
        "training_runs": len(jobs),
        "workers": workers,
        "evaluations": sum(len(job.evaluations) for job in jobs),
        "first_job": first["name"],
        "first_job_train_s": first["train_s"],
        "first_job_eval_s": round(eval_s, 1),
        "setup_s": round(setup_s, 1),
        "total_low_s": round(setup_s + low),
        "total_high_s": round(setup_s + high),
    }


# ----------------------------------------------------------------------------------------------- summary


def summarise(rows: list[dict], majority: dict) -> list[dict]:
    """Mean and spread over seeds of every (group, label, budget, k) series point, per question type."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["group"], row["label"], row["budget"], row["max_object_tokens"])
        groups.setdefault(key, []).append(row)
    summary = []
    for (group, label, budget, k), members in groups.items():
        per_type = {}
        for name in members[0]["accuracy"]:
            values = [member["accuracy"][name] for member in members]
            per_type[name] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values),
                "max": max(values),
            }
        summary.append(
            {
                "group": group,
                "label": label,
                "budget": budget,
                "max_object_tokens": k,
                "object_tokens_kept": members[0]["object_tokens_kept"],
                "tokens": statistics.fmean(member["tokens"] for member in members),
                "seeds": [member["seed"] for member in members],
                "accuracy": per_type,
                "majority": {name: score["accuracy"] for name, score in majority.items()},
                "all_learned": all(member["learned"] for member in members),
                "seeds_learned": sum(member["learned"] for member in members),
                "mean_wall_s": round(statistics.fmean(member["wall_s"] for member in members), 1),
            }
        )
    return summary


def learned_text(entry: dict) -> str:
    """"yes" when every seed learned, "NO" when none did, else e.g. "2 of 3"."""
    learned, seeds = entry["seeds_learned"], len(entry["seeds"])
    return "yes" if learned == seeds else "NO" if learned == 0 else f"{learned} of {seeds}"


def summary_table(summary: list[dict], majority: dict) -> tuple[list[str], list[list]]:
    """(headers, rows) of the summary table: one row per series point, then the majority-answer level."""
    types = [name for name in majority if name != "overall"]
    headers = ["row", "tokens", "seeds", "overall", "±std", *types, "learned", "wall s"]
    table = []
    for entry in summary:
        name = entry["label"] + (f" k={entry['object_tokens_kept']}" if entry["object_tokens_kept"] else "")
        overall = entry["accuracy"]["overall"]
        table.append(
            [
                name,
                f"{entry['tokens']:.4g}",
                len(entry["seeds"]),
                f"{overall['mean']:.3f}",
                f"{overall['std']:.3f}",
                *(f"{entry['accuracy'][t]['mean']:.3f}" for t in types),
                learned_text(entry),
                entry["mean_wall_s"],
            ]
        )
    table.append(
        ["majority answer", "-", "-", f"{majority['overall']['accuracy']:.3f}", "-",
         *(f"{majority[t]['accuracy']:.3f}" for t in types), "-", "-"]
    )
    return headers, table


def print_summary(summary: list[dict], majority: dict) -> None:
    measure.print_table(*summary_table(summary, majority))


SERIES_STYLE = {
    "delta": {"color": "C0", "marker": "o", "linestyle": "-"},
    "delta official": {"color": "C8", "marker": "P", "linestyle": "-"},
    "tokenpacker": {"color": "C1", "marker": "s", "linestyle": "-"},
    "avgpool": {"color": "C2", "marker": "^", "linestyle": "-"},
    "elastic": {"color": "C0", "marker": "o", "linestyle": "--", "markerfacecolor": "white"},
    "mlp": {"color": "C3", "marker": "*", "linestyle": "none", "markersize": 12},
    "objects": {"color": "C4", "marker": "D", "linestyle": ":"},
    "objects MaskInversion": {"color": "C9", "marker": "d", "linestyle": "--"},
    "no EMHSA": {"color": "C5", "marker": "v", "linestyle": "none"},
    "no DeltaProjection": {"color": "C6", "marker": "<", "linestyle": "none"},
    "no transformer block": {"color": "C7", "marker": ">", "linestyle": "none"},
}


# The delta rows without a layout in their label were trained with the shared_base layout.
LEGEND_NAMES = {"delta": "delta shared_base", "elastic": "elastic (shared_base)"}
X_NUDGE = {"no EMHSA": 1.12, "no DeltaProjection": 1.25, "no transformer block": 1.4}  # ablations sit right of 36


def draw_series(axis, summary: list[dict], question_type: str, with_labels: bool) -> None:
    """One line per series on `axis`: mean accuracy of `question_type` vs tokens, seed std as error bars."""
    for label, style in SERIES_STYLE.items():
        points = sorted((e for e in summary if e["label"] == label), key=lambda e: e["tokens"])
        if not points:
            continue
        name = LEGEND_NAMES.get(label, label)
        if label in OBJECT_ROWS.values():
            name = f"{label} (k = all ... none, x = {points[0]['budget']} + object tokens)"
        axis.errorbar(
            [e["tokens"] * X_NUDGE.get(label, 1.0) for e in points],
            [e["accuracy"][question_type]["mean"] for e in points],
            yerr=[e["accuracy"][question_type]["std"] for e in points],
            capsize=3,
            label=name if with_labels else None,
            **style,
        )


def plot(summary: list[dict], majority: dict, grid: dict, path: Path) -> None:
    """Left: overall accuracy vs tokens per image (log x), one line per projector type, elastic dashed, seed std
    bars, the majority-answer level dotted. Right: the same per question type, each with its own majority level."""
    types = [name for name in majority if name != "overall"]
    type_columns = math.ceil(len(types) / 2)
    figure = plt.figure(figsize=(15, 6))
    layout = figure.add_gridspec(2, 2 + type_columns, width_ratios=[2.2, 2.2] + [1.4] * type_columns)
    overall = figure.add_subplot(layout[:, :2])
    panels = [figure.add_subplot(layout[i % 2, 2 + i // 2]) for i in range(len(types))]
    ticks = sorted({*grid["allowed_budgets"]})
    for axis, question_type in zip([overall, *panels], ["overall", *types]):
        draw_series(axis, summary, question_type, with_labels=axis is overall)
        axis.axhline(majority[question_type]["accuracy"], color="grey", linestyle=":",
                     label="majority answer" if axis is overall else None)  # fmt: skip
        axis.set_xscale("log")
        axis.set_xticks(ticks, [str(t) for t in ticks], fontsize=7 if axis is not overall else None)
        axis.minorticks_off()
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
        axis.set_title(question_type, fontsize=9 if axis is not overall else None)
    overall.set_xlabel(f"visual tokens per image ({grid['patch_grid']}x{grid['patch_grid']} patch grid)")
    overall.set_ylabel("accuracy, synthetic test split")
    overall.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ----------------------------------------------------------------------------------------------- main


def parse_arguments(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()), formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=ROW_GROUPS, default=list(ROW_GROUPS), help="row groups, run in this order")
    parser.add_argument("--budgets", type=int, nargs="+", default=None,
                        help=f"Delta budgets, also the baselines' unless --baseline_budgets (default {ISSUE_BUDGETS}, those the grid allows)")
    parser.add_argument("--baseline_budgets", type=int, nargs="+", default=None,
                        help="TokenPacker/avg-pool budgets (default: --budgets); at the full grid both add little to the MLP")
    parser.add_argument("--ablation_budget", type=int, default=None, help="default: largest budget below the full grid")
    parser.add_argument("--object_budget", type=int, default=None, help="default: smallest budget above 1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="e.g. 0 1 2 for a spread (3x the time)")
    parser.add_argument("--seeded_rows", nargs="*", choices=ROW_GROUPS, default=["delta", "official", "mlp", "ablations"],
                        help="row groups run with every seed; the others run with the first seed only")
    parser.add_argument("--train_samples", type=int, default=QUICK_START.train_samples, help="training questions (the quick start's)")
    parser.add_argument("--test_samples", type=int, default=QUICK_START.test_samples, help="test questions every row is scored on")
    parser.add_argument("--max_steps", type=int, default=QUICK_START.train_steps, help="training steps of every row")
    parser.add_argument("--batch_size", type=int, default=QUICK_START.batch_size, help="training batch size")
    parser.add_argument("--learning_rate", type=float, default=QUICK_START.learning_rate, help="training learning rate")
    parser.add_argument("--language_model_layers", type=int, default=3,
                        help="layers of the small Llama: 3, as every recorded table")
    parser.add_argument("--language_model_heads", type=int, default=8,
                        help="heads of the small Llama: 8, as every recorded table (the quick start uses 32)")
    parser.add_argument("--warmup_steps", type=int, default=QUICK_START.warmup_steps, help="vision tower warm-up steps")
    parser.add_argument("--warmup_learning_rate", type=float, default=QUICK_START.warmup_learning_rate, help="vision tower warm-up learning rate")
    parser.add_argument("--image_size", type=int, default=QUICK_START.image_size, help="side of the synthetic scenes, pixels")
    parser.add_argument("--patch_size", type=int, default=QUICK_START.patch_size, help="96 / 8 = 12x12 grid; 192 / 8 = 24x24")
    parser.add_argument("--scene_grid", type=int, default=3, help="cells per side of a scene (8 with 192 px: dense)")
    parser.add_argument("--max_objects", type=int, default=None,
                        help="most shapes in a scene (default: the generator's, 4; at most scene_grid^2 - 1)")
    parser.add_argument("--question_types", nargs="+", choices=QUESTION_TYPES, default=list(QUESTION_TYPES),
                        help="asked in turn; on dense scenes leave out text and caption (one word, whole-scene lists)")
    parser.add_argument("--data_seed", type=int, default=0, help="synthetic data and tower warm-up (same every row)")
    parser.add_argument("--eval_batch_size", type=int, default=32, help="questions per generate call in evaluation")
    parser.add_argument("--learned_margin", type=float, default=0.05,
                        help="a row learned when its overall accuracy exceeds the majority level by this much")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in all (default: torch's own choice)")
    parser.add_argument("--workers", type=int, default=1, help="training runs at a time, in separate processes")
    parser.add_argument("--output_dir", default="outputs/accuracy_vs_budget", help="data, shared parts, checkpoints")
    parser.add_argument("--results_name", default="accuracy_vs_budget",
                        help="benchmarks/results/<name>.json and .png; change it for shrunk runs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(argv)
    if args.workers < 1:
        raise ValueError(f"--workers {args.workers}: give at least 1 (training runs at a time).")
    command = "python benchmarks/accuracy_vs_budget.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_warning()
    datasets.disable_progress_bars()
    started = time.time()
    grid = grid_budgets(args)
    print(
        f"{grid['patch_grid']}x{grid['patch_grid']} patch grid: budgets {grid['budgets']} (allowed "
        f"{grid['allowed_budgets']}{'; dropped ' + str(grid['dropped_budgets']) if grid['dropped_budgets'] else ''}), "
        f"MLP at {grid['full_grid']}, ablations at {grid['ablation_budget']}, object tokens at {grid['object_budget']}",
        flush=True,
    )
    work = Path(args.output_dir)
    shared = build_shared(args, grid, work)
    jobs = plan_jobs(args, grid, shared["max_masks"], shared["inversion_width"])
    print(f"{len(jobs)} training runs, {sum(len(j.evaluations) for j in jobs)} evaluations", flush=True)

    finished, estimate = {}, None
    for done, (job, checkpoint, job_rows) in enumerate(run_jobs(args, jobs, shared), start=1):
        finished[job.name] = (checkpoint, job_rows)  # kept in the plan's order, whichever worker finishes first
        checkpoints = [finished[j.name][0] for j in jobs if j.name in finished]
        rows = [row for j in jobs if j.name in finished for row in finished[j.name][1]]
        accuracy = ", ".join(
            f"{row['label']}@{row['budget']}"
            + ("" if row["max_object_tokens"] is None else f" k={row['max_object_tokens']}")
            + f" {row['accuracy']['overall']:.3f}"
            + ("" if row["learned"] else " (not learned)")
            for row in job_rows
        )
        print(
            f"[{time.time() - started:6.0f}s] {done}/{len(jobs)} {job.name}: train {checkpoint['train_s']:.0f} s "
            f"({checkpoint['steps_per_s']} steps/s), {accuracy}",
            flush=True,
        )
        if estimate is None:
            estimate = estimate_run(jobs, job, checkpoint, job_rows, shared, args.workers)
            print(
                f"Estimated wall time of this run: {estimate['total_low_s'] / 60:.0f}-"
                f"{estimate['total_high_s'] / 60:.0f} min for {estimate['training_runs']} training runs and "
                f"{estimate['evaluations']} evaluations on {args.workers} worker(s), from {job.name} "
                f"({checkpoint['train_s']:.0f} s training, {estimate['first_job_eval_s']:.0f} s per evaluation); the "
                "range lies between time proportional to the sequence length and every run as slow as the first",
                flush=True,
            )
        payload = write_all(args, command, grid, shared, estimate, checkpoints, rows, started, len(jobs))

    print()
    print_summary(payload["summary"], shared["majority"])
    not_learned = sorted({row["checkpoint"] for row in rows if not row["learned"]})
    if not_learned:
        print(f"\nNot above majority + {args.learned_margin}: {', '.join(not_learned)}")
    print(f"\nWrote benchmarks/results/{args.results_name}.json and .png in {payload['total_s'] / 60:.1f} min.")
    return payload


def write_all(args, command, grid, shared, estimate, checkpoints, rows, started, planned_runs) -> dict:
    """Writes the JSON and the plot of every row so far (after each training run, so a cut-short run keeps its rows)."""
    summary = summarise(rows, shared["majority"])
    payload = {
        "settings": {**vars(args), **grid, "max_object_masks": shared["max_masks"],
                     "object_token_counts": object_token_counts(shared["max_masks"]) if shared["max_masks"] else None},
        "setup_s": shared["timings_s"],
        "warmup_final_loss": shared["warmup_final_loss"],
        "estimate": estimate,
        "training_runs_done": f"{len(checkpoints)} of {planned_runs}",
        "total_s": round(time.time() - started, 1),
        "majority": shared["majority"],
        "checkpoints": checkpoints,
        "rows": rows,
        "summary": summary,
    }
    path = measure.write_results(args.results_name, payload, command)
    plot(summary, shared["majority"], grid, path.with_suffix(".png"))
    return payload


if __name__ == "__main__":
    main()
