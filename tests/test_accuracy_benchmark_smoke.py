"""benchmarks/accuracy_vs_budget.py: masks built from the scene layout in the precomputed column layout, a tiny run."""

import json
import math
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import transformers

from delta_llava.processing.precompute_object_masks import object_masks_feature
from delta_llava.training.synthetic_vqa import (
    PrintedWord,
    Scene,
    ShapeObject,
    make_synthetic_vqa,
    render_scene,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import accuracy_vs_budget as benchmark  # noqa: E402
import measure  # noqa: E402

IMAGE_SIZE = 32  # a 3x3 scene grid on 32 px: cell edges at 0, 11, 21, 32


def hand_made_scene():
    """Middle-right: a large red square; top-left: a small blue circle; bottom-center: the word "cat"."""
    cells = [None] * 9
    cells[5] = ShapeObject("red", "square", "large", (0.0, 0.0))
    cells[0] = ShapeObject("blue", "circle", "small", (0.0, 0.0))
    cells[7] = PrintedWord("cat")
    scene = Scene(3, tuple(cells))
    return scene, render_scene(scene, IMAGE_SIZE)


def test_cell_boxes_match_the_rendered_grid():
    assert benchmark.cell_box(5, 3, IMAGE_SIZE) == (21, 11, 32, 21)  # (left, top, right, bottom)
    assert benchmark.cell_box(0, 3, IMAGE_SIZE) == (0, 0, 11, 11)
    assert benchmark.cell_box(4, 3, 96) == (32, 32, 64, 64)


def test_mask_stack_is_the_cells_boxes_largest_first_then_background():
    scene, image = hand_made_scene()
    stack = benchmark.scene_mask_stack(scene.cell_labels(), image)
    assert stack.dtype == torch.bool and stack.shape == (4, IMAGE_SIZE, IMAGE_SIZE)

    large_square = torch.zeros(IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)
    large_square[11:21, 21:32] = True  # rows 11..20, columns 21..31: exactly the middle-right cell
    assert torch.equal(stack[0], large_square)
    drawn = torch.from_numpy(np.any(np.asarray(image) != 255, axis=-1))
    assert drawn[11:21, 21:32].any()

    areas = [int(drawn[m].sum()) for m in stack[:3]]
    assert areas == sorted(areas, reverse=True)  # objects by drawn pixel count, largest first
    cells_in_order = [next(i for i in range(9) if torch.equal(m, cell_mask(i))) for m in stack[:3]]
    assert cells_in_order[0] == 5 and set(cells_in_order) == {0, 5, 7}
    assert torch.equal(stack[3], ~stack[:3].any(dim=0))  # background last: the empty cells
    assert stack[3].sum() == IMAGE_SIZE**2 - sum(int(cell_mask(i).sum()) for i in (0, 5, 7))


def cell_mask(index: int) -> torch.Tensor:
    left, top, right, bottom = benchmark.cell_box(index, 3, IMAGE_SIZE)
    mask = torch.zeros(IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)
    mask[top:bottom, left:right] = True
    return mask


def test_object_masks_column_has_the_precomputed_layout():
    dataset = benchmark.with_object_masks(make_synthetic_vqa(4, seed=0, image_size=IMAGE_SIZE), mask_size=8)
    assert dataset.features["object_masks"] == object_masks_feature(8)  # what precompute_object_masks writes
    stacks = [np.asarray(image_stacks[0]) for image_stacks in dataset["object_masks"]]
    assert all(len(image_stacks) == 1 for image_stacks in dataset["object_masks"])  # one stack per image
    assert all(s.ndim == 3 and s.shape[1:] == (8, 8) and s.min() >= 0 and s.max() <= 255 for s in stacks)
    counts = [int((np.asarray(labels) > 0).sum()) + 1 for labels in dataset["cell_labels"]]
    assert [len(s) for s in stacks] == counts  # one mask per non-empty cell + the background


def test_object_token_counts():
    assert benchmark.object_token_counts(6) == {"all": 6, "half": 3, "quarter": 2, "none": 0}
    assert benchmark.object_token_counts(5) == {"all": 5, "half": 3, "quarter": 2, "none": 0}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("accuracy_vs_budget")
    patch = pytest.MonkeyPatch()
    patch.setattr(measure, "RESULTS_DIR", root / "results")
    try:
        payload = benchmark.main(
            [
                "--rows", "delta", "objects", "objects_inversion",
                "--budgets", "4",
                "--seeds", "0",
                "--train_samples", "40",
                "--test_samples", "12",
                "--max_steps", "3",
                "--batch_size", "4",
                "--warmup_steps", "2",
                "--image_size", "32",
                "--patch_size", "4",
                "--output_dir", str(root / "work"),
                "--results_name", "tiny",
                "--workers", "2",  # the two runs in spawned processes, as a full table runs on two cores
            ]
        )
    finally:
        patch.undo()
    return root, payload


def test_tiny_run_writes_the_json_and_plot(tiny_run):
    root, payload = tiny_run
    path = root / "results" / "tiny.json"
    assert json.loads(path.read_text())["rows"] == json.loads(json.dumps(payload["rows"]))
    assert (root / "results" / "tiny.png").stat().st_size > 0
    record = json.loads(path.read_text())
    for key in ("command", "machine", "settings", "estimate", "majority", "checkpoints", "rows", "summary", "total_s"):
        assert key in record
    settings = record["settings"]
    assert settings["patch_grid"] == 8 and settings["allowed_budgets"] == [64, 16, 4, 1]
    assert settings["budgets"] == [4] and settings["object_budget"] == 4


def test_tiny_run_rows(tiny_run):
    _, payload = tiny_run
    rows = payload["rows"]
    assert sorted(c["name"] for c in payload["checkpoints"]) == ["delta_b4_s0", "objects_b4_s0", "objects_inversion_b4_s0"]
    assert all(c["max_steps"] == 3 for c in payload["checkpoints"])
    types = {"attribute", "position", "count", "existence", "text", "caption", "overall"}
    for row in rows:
        assert set(row["accuracy"]) == types and set(row["majority"]) == types
        assert all(0 <= value <= 1 for value in [*row["accuracy"].values(), *row["majority"].values()])
        assert isinstance(row["learned"], bool)
        assert row["learned"] == (row["accuracy"]["overall"] > row["majority"]["overall"] + 0.05)
        assert row["wall_s"] >= row["train_s"] > 0 and row["eval_s"] > 0
    delta, *object_rows = rows
    objects, inverted = object_rows[:4], object_rows[4:]
    assert (delta["label"], delta["budget"], delta["max_object_tokens"]) == ("delta", 4, None)
    max_masks = payload["settings"]["max_object_masks"]
    kept = [max_masks, math.ceil(max_masks / 2), math.ceil(max_masks / 4), 0]
    assert [r["max_object_tokens"] for r in objects] == kept
    assert [r["object_tokens_kept"] for r in objects] == ["all", "half", "quarter", "none"]
    assert objects[-1]["tokens"] == 4 and objects[0]["tokens"] > objects[1]["tokens"] > 4
    assert {r["checkpoint"] for r in objects} == {"objects_b4_s0"}
    # the MaskInversion rows: same masks, so the same token counts, from their own checkpoint
    assert [r["tokens"] for r in inverted] == [r["tokens"] for r in objects]
    assert {(r["checkpoint"], r["label"]) for r in inverted} == {("objects_inversion_b4_s0", "objects MaskInversion")}
    summary = payload["summary"]
    assert len(summary) == 9 and all(entry["accuracy"]["overall"]["std"] == 0.0 for entry in summary)
    assert payload["estimate"]["training_runs"] == 3 and payload["estimate"]["evaluations"] == 9


def test_tiny_run_inversion_checkpoint_reads_embeddings(tiny_run):
    """The MaskInversion row trains on the precomputed embeddings (the tower's width, identity projection)."""
    root, payload = tiny_run
    (record,) = [c for c in payload["checkpoints"] if c["name"] == "objects_inversion_b4_s0"]
    config = json.loads((Path(record["path"]) / "config.json").read_text())
    assert config["object_features"] == "mask_inversion" and config["object_embedding_dim"] == 64
    assert config["mask_inversion"] == {"source": str(root / "work" / "inversion_tower"), "layer_index": -1,
                                        "iterations": 10, "lr": 0.5, "alpha": 0.0, "weight_decay": 0.0}  # fmt: skip
    train = datasets.load_from_disk(str(root / "work" / "data" / "train_objects_inversion"))
    assert "object_masks" not in train.column_names
    masks = datasets.load_from_disk(str(root / "work" / "data" / "train_objects"))["object_masks"]
    embeddings = train["object_embeddings"]
    assert [len(stacks[0]) for stacks in embeddings] == [len(stacks[0]) for stacks in masks]
    assert embeddings[0][0] == embeddings[1][0]  # two questions per scene share one inversion
    tower = transformers.CLIPVisionModelWithProjection.from_pretrained(root / "work" / "inversion_tower")
    assert torch.equal(tower.visual_projection.weight, torch.eye(64))


def test_dense_scenes_reach_data_tokenizer_and_rows(tmp_path):
    """--scene_grid/--max_objects/--question_types: the VQA rows of issue 31's dense scenes, in the same harness."""
    patch = pytest.MonkeyPatch()
    patch.setattr(measure, "RESULTS_DIR", tmp_path / "results")
    dense_types = ["attribute", "position", "count", "existence"]
    try:
        payload = benchmark.main(
            ["--rows", "avgpool", "--budgets", "4", "--seeds", "0", "--train_samples", "24", "--test_samples", "16",
             "--max_steps", "2", "--batch_size", "4", "--warmup_steps", "2", "--image_size", "32", "--patch_size", "4",
             "--scene_grid", "4", "--max_objects", "12", "--question_types", *dense_types,
             "--output_dir", str(tmp_path / "work"), "--results_name", "dense"]  # fmt: skip
        )
    finally:
        patch.undo()
    train = datasets.load_from_disk(str(tmp_path / "work" / "data" / "train"))
    assert set(train["question_type"]) == set(dense_types)
    assert any(answer.startswith("row") and " col" in answer for answer in train["answer"])  # 4x4 cell names
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "work" / "language_model")
    for ids in tokenizer(["12", "row4 col4"], add_special_tokens=False)["input_ids"]:  # counts up to --max_objects
        assert tokenizer.unk_token_id not in ids
    (row,) = payload["rows"]
    assert set(row["accuracy"]) == {*dense_types, "overall"}
    settings = payload["settings"]
    assert (settings["scene_grid"], settings["max_objects"], settings["question_types"]) == (4, 12, dense_types)
