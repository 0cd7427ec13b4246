"""benchmarks/token_bottleneck.py and region_probe.py: the rows planned, the readout's geometry, a probe that learns
what the tokens hold, and a tiny run that writes, keeps and extends its results."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import region_probe  # noqa: E402
import token_bottleneck as benchmark  # noqa: E402

from conftest import tiny_config  # noqa: E402
from delta_llava import DeltaLlavaModel  # noqa: E402
from delta_llava.training.synthetic_vqa import CELL_LABEL_NAMES  # noqa: E402


def test_rows_planned_per_group():
    args = benchmark.parse_arguments(["--budgets", "576", "16", "1", "--seeds", "0", "1"])
    rows = benchmark.plan_rows(args)
    by_label = {}
    for row in rows:
        by_label.setdefault(row.label, []).append(row)
    assert [(row.train_budgets, row.seed) for row in by_label["MLP"]] == [((576,), 0), ((576,), 1)]
    assert {row.train_budgets for row in by_label["avgpool"]} == {(16,), (1,)}  # at 576 it is the MLP
    assert {row.train_budgets for row in by_label["delta official"]} == {(576,), (16,), (1,)}
    assert {row.train_budgets for row in by_label["no EMHSA"]} == {(36,), (16,)}
    assert [row.eval_budgets for row in by_label["elastic (shared_base)"]] == [(576, 16, 1)] * 2
    memory = by_label["delta official, memory [1, 2]"][0]
    assert memory.projector["memory_layers"] == [1, 2] and memory.projector["delta_layout"] == "official"
    assert len({row.key for row in rows}) == len(rows)
    with pytest.raises(SystemExit):
        benchmark.parse_arguments(["--budgets", "100"])


def test_readout_distances_place_cells_and_tokens_in_patch_units():
    readout = region_probe.CellReadout(token_width=8, patch_grid=24, cell_grid=8, num_classes=3)
    one_token = readout.squared_distances(1, "cpu")  # the token's centre is the image's: (12, 12)
    assert one_token.shape == (64, 1)
    assert one_token[0, 0].item() == pytest.approx(2 * (12 - 1.5) ** 2)  # cell (0, 0) is centred at (1.5, 1.5)
    full = readout.squared_distances(24, "cpu")
    assert full.shape == (64, 576)
    assert full[9].argmin().item() == 4 * 24 + 4  # cell (1, 1) covers patches 3..5: its centre patch is (4, 4)
    logits = readout(torch.randn(2, 16, 8))
    assert logits.shape == (2, 64, 3)


def test_probe_reads_cells_from_full_tokens_and_loses_them_when_pooled_to_one():
    """States in which every patch one-hot encodes its cell's label: the MLP's 576 tokens hold every cell, one pooled
    token only the scene's mix, so the probe must name most cells from the first and few from the second."""
    torch.manual_seed(0)
    labels = torch.randint(len(CELL_LABEL_NAMES), (160, 64))
    cell_of_patch = (torch.arange(24) // 3)[:, None] * 8 + (torch.arange(24) // 3)[None, :]
    one_hot = torch.nn.functional.one_hot(labels[:, cell_of_patch.flatten()], 64).float()  # (N, 576, 64)
    states = torch.stack([one_hot] * 3, dim=1).half()  # hidden states 0, 1, 2 alike
    args = benchmark.parse_arguments([])
    tower = benchmark.CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, image_size=192, patch_size=8)  # fmt: skip
    scores = {}
    for label, budget in (("MLP", 576), ("avgpool", 1)):
        row = next(row for row in benchmark.plan_rows(args) if row.label == label)
        row = benchmark.ProbeRow(label, row.projector, (budget,), (budget,), 0)
        outcome = region_probe.train_and_score_probe(
            benchmark.probe_config(tower, row), states[:128], labels[:128], states[128:], labels[128:], [budget],
            [budget], len(CELL_LABEL_NAMES), benchmark.WORD_CLASSES, steps=150, seed=0, learning_rate=3e-3,
        )  # fmt: skip
        scores[label] = outcome["scores"][budget]["filled"]
    assert scores["MLP"] > 0.6, scores
    assert scores["avgpool"] < 0.2, scores


@pytest.mark.parametrize("projector", [{"projector_type": "delta", "memory_layers": [1, 2]}, {"projector_type": "avgpool"}])
def test_probe_reads_the_tower_states_the_model_reads(projector):
    """The probe projects cached, stacked hidden states; its tokens must be the model's for the same images (CLS token
    dropped, patch features and memory levels taken from the same layers)."""
    torch.manual_seed(0)
    model = DeltaLlavaModel(tiny_config(vision_feature_layer=-2, **projector)).eval()
    pixels = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = model.get_image_features(pixels, num_visual_tokens=16).pooler_output
        states = model.vision_tower(pixels, output_hidden_states=True).hidden_states
        stacked = torch.stack([state[:, 1:] for state in states], dim=1)  # (2, layers + 1, 576, 32), CLS dropped
        tokens = region_probe.project(model.multi_modal_projector, model.config, stacked, 16)
    torch.testing.assert_close(tokens, torch.stack(list(expected)))


def test_tiny_run_writes_results_and_reuse_extends_them(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "RESULTS", tmp_path / "results")
    tiny = ["--train_images", "24", "--test_images", "8", "--warmup_steps", "2", "--probe_steps", "2",
            "--output_dir", str(tmp_path / "work"), "--results_name", "tiny", "--seeds", "0", "1"]  # fmt: skip
    benchmark.main([*tiny, "--rows", "mlp", "avgpool", "--budgets", "4"])
    written = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert [row["label"] for row in written["rows"]] == ["MLP", "MLP", "avgpool", "avgpool"]
    assert set(written["separation"]["points_above_avgpool"]) == {"4"}
    mlp = next(entry for entry in written["summary"] if entry["label"] == "MLP")
    assert mlp["seeds"] == 2 and mlp["filled_std"] is not None and 0 <= mlp["filled"] <= 1
    assert (tmp_path / "results" / "tiny.png").is_file() and (tmp_path / "work" / "tower_states.pt").is_file()

    benchmark.main([*tiny, "--rows", "avgpool", "--budgets", "4", "1", "--reuse"])
    extended = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert [row["key"] for row in extended["rows"][:4]] == [row["key"] for row in written["rows"]]  # kept, not rerun
    assert extended["rows"][:4] == written["rows"]
    assert [row["train_budgets"] for row in extended["rows"][4:]] == [[1], [1]]
    assert not list((tmp_path / "results").glob("*.partial"))
    assert math.isfinite(extended["tower"]["warmup_final_loss"])
    assert len(extended["commands"]) == 2 and extended["commands"][1].endswith("--reuse")

    with pytest.raises(ValueError, match="other probe_steps"):
        benchmark.main([*tiny, "--rows", "avgpool", "--budgets", "16", "--reuse", "--probe_steps", "3"])
    extended["tower"]["warmup_final_loss"] += 1e-3  # as if probed on a tower warmed up on another machine
    (tmp_path / "results" / "tiny.json").write_text(json.dumps(extended))
    with pytest.raises(ValueError, match="another warm-up of the tower"):
        benchmark.main([*tiny, "--rows", "avgpool", "--budgets", "16", "--reuse"])
