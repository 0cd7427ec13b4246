"""Hub export: one self-contained folder per budget with a model card, and the upload path with the Hub replaced."""

import json
import logging
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError, HTTPError, LocalTokenNotFoundError
from safetensors.torch import load_file, save_file
from transformers import CLIPImageProcessor

from conftest import tiny_config, tiny_text_config
from delta_llava import DeltaLlavaForConditionalGeneration
from delta_llava.hub_cards.export import check_export_folder, export_checkpoints, main, plan_exports
from delta_llava.hub_cards.model_card import check_card_metadata
from delta_llava.hub_cards.publish import HubPublishError
from delta_llava.processing import DeltaLlavaProcessor
from delta_llava.strict_loading import load_checkpoint_strictly
from delta_llava.training.local_tokenizer import build_word_level_tokenizer
from isolated_python import run_without_project

VISION_ID, LANGUAGE_ID = "openai/clip-vit-large-patch14-336", "lmsys/vicuna-7b-v1.5"
EXPORTED_BUDGETS = [144, 36, 1]
REMOTE_CODE = {
    "configuration_delta_llava.py",
    "modeling_delta_llava.py",
    "projector_delta.py",
    "processing_delta_llava.py",
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny saved checkpoint (24x24 patch grid) whose config records the Hub ids of its towers."""
    tokenizer = build_word_level_tokenizer("what is in the picture a red square".split())
    config = tiny_config(
        text_config=tiny_text_config(vocab_size=len(tokenizer)), image_token_id=tokenizer.image_token_id
    )
    config.vision_config._name_or_path, config.text_config._name_or_path = VISION_ID, LANGUAGE_ID
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("trained") / "checkpoint"
    DeltaLlavaForConditionalGeneration(config).save_pretrained(folder)
    side = config.vision_config.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    DeltaLlavaProcessor(image_processor, tokenizer, num_visual_tokens=16).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def exports(checkpoint, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("exports")
    return export_checkpoints([checkpoint], output_dir, EXPORTED_BUDGETS, max_shard_size="200KB")


def write_results(path: Path) -> dict:
    """A results file in the quick start's layout, scored at 144 and 36 tokens."""
    results = {
        "arguments": {"train_samples": 600, "learning_rate": 0.002, "elastic_budgets": [144, 36, 16, 4, 1]},
        "train_loss": 0.8125,
        "majority": {"count": {"accuracy": 0.25, "chance": 0.2}, "overall": {"accuracy": 0.375, "chance": 0.3}},
        "budgets": {
            "144": {
                "count": {"accuracy": 0.6125, "num_samples": 80},
                "overall": {"accuracy": 0.7031, "macro_accuracy": 0.69},
            },
            "36": {
                "count": {"accuracy": 0.4375, "num_samples": 80},
                "existence": {"accuracy": 0.8, "f1": 0.7778, "num_samples": 20},
                "overall": {"accuracy": 0.52, "macro_accuracy": 0.6188, "num_samples": 100},
            },
        },
    }
    path.write_text(json.dumps(results))
    return results


def test_each_folder_holds_weights_code_processor_and_card_with_its_budget(exports):
    assert [export.budget for export in exports] == EXPORTED_BUDGETS
    output_dir = exports[0].folder.parent
    assert sorted(p.name for p in output_dir.iterdir()) == sorted(
        export.folder.name for export in exports
    )  # no staging
    for export in exports:
        names = {p.name for p in export.folder.iterdir()}
        assert REMOTE_CODE <= names
        assert {"README.md", "generation_config.json", "chat_template.jinja", "tokenizer.json"} <= names
        assert "model.safetensors.index.json" in names and len([n for n in names if n.startswith("model-0")]) > 1
        config = json.loads((export.folder / "config.json").read_text())
        assert config["num_visual_tokens"] == export.budget and "AutoModelForImageTextToText" in config["auto_map"]
        processor_config = json.loads((export.folder / "processor_config.json").read_text())
        assert processor_config["num_visual_tokens"] == export.budget
        check_export_folder(export.folder, export.budget)


def test_every_folder_loads_and_generates_where_the_project_is_not_installed(exports):
    output_dir = exports[0].folder.parent
    folders = {export.folder.name: export.budget for export in exports}
    snippet = re.search(r"```python\n(.*?)```", (exports[0].folder / "README.md").read_text(), re.S).group(1)
    result = run_without_project(
        f"""
        import numpy as np, torch
        from PIL import Image
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save("example.jpg")
        for folder, budget in {folders!r}.items():
            config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
            processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
            model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
            assert not type(model).__module__.startswith("delta_llava")
            assert config.num_visual_tokens == model.config.num_visual_tokens == processor.num_visual_tokens == budget
            content = [{{"type": "image"}}, {{"type": "text", "text": "what is in the picture"}}]
            messages = [{{"role": "user", "content": content}}]
            prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
            inputs = processor(images=[Image.open("example.jpg")], text=prompt, return_tensors="pt")
            assert int((inputs["input_ids"] == config.image_token_id).sum()) == budget
            output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
            assert output.shape[1] == inputs["input_ids"].shape[1] + 3
            print("LOADED", folder)
        exec({snippet!r})
        print("SNIPPET-OK")
        """,
        cwd=str(output_dir),
    )
    assert result.stdout.count("LOADED") == len(exports) and "SNIPPET-OK" in result.stdout


def test_default_budgets_are_the_paper_budgets_the_patch_grid_allows(checkpoint, tmp_path):
    plans = plan_exports([checkpoint], tmp_path / "out")
    assert [plan.budget for plan in plans] == [576, 144, 64, 36, 16, 4, 1]
    assert not (tmp_path / "out").exists()


def test_one_checkpoint_per_budget_is_exported_at_its_own_default(checkpoint, tmp_path):
    other = tmp_path / "checkpoint-36"
    shutil.copytree(checkpoint, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "num_visual_tokens": 36}))
    plans = plan_exports([checkpoint, other], tmp_path / "out")
    assert {plan.budget: plan.checkpoint for plan in plans} == {16: checkpoint, 36: other}
    with pytest.raises(
        ValueError, match=r"--budgets \[144\] match no checkpoint; the checkpoints default to \[36, 16\]"
    ):
        plan_exports([checkpoint, other], tmp_path / "out", budgets=[36, 144])
    twin = shutil.copytree(checkpoint, tmp_path / "twin")
    with pytest.raises(ValueError, match="both default to 16 visual tokens"):
        plan_exports([checkpoint, twin], tmp_path / "out")


def test_an_invalid_budget_is_refused_before_anything_is_written(checkpoint, tmp_path):
    with pytest.raises(
        ValueError, match=re.escape("--budgets=25 is not possible") + r".*\[576, 144, 64, 36, 16, 9, 4, 1\]"
    ):
        export_checkpoints([checkpoint], tmp_path / "out", [144, 25])
    assert not (tmp_path / "out").exists()


def test_card_without_results_says_so_and_has_valid_metadata(exports):
    text = (exports[1].folder / "README.md").read_text()
    card = check_card_metadata(text)
    data = card.data
    assert (data.library_name, data.pipeline_tag, data.license) == ("transformers", "image-text-to-text", "other")
    assert data.base_model == [VISION_ID, LANGUAGE_ID] and "visual-tokens-36" in data.tags
    assert data.eval_results is None and "model-index" not in text
    assert "No evaluation results were provided" in text
    assert "| 36 tokens, this model | 576 tokens, MLP baseline |" in text and "FLOPs" in text
    assert "Zamini" in text and "When LLaVA Meets Objects" in text
    assert ModelCard.load(exports[1].folder / "README.md").data.to_dict() == data.to_dict()


def test_card_with_a_results_file_shows_exactly_its_numbers(checkpoint, tmp_path):
    results = write_results(tmp_path / "results.json")
    scored, unscored = export_checkpoints([checkpoint], tmp_path / "out", [36, 16], results=tmp_path / "results.json")

    card = ModelCard.load(scored.folder / "README.md")
    reported = {(r.metric_name, r.metric_value) for r in card.data.eval_results}
    expected = {
        (f"{question_type} {metric}", value)
        for question_type, scores in results["budgets"]["36"].items()
        for metric, value in scores.items()
        if metric != "num_samples"
    }
    assert reported == expected
    assert {r.task_type for r in card.data.eval_results} == {"visual-question-answering"}
    assert "| count | accuracy 0.438 | 0.250 | 0.200 | 80 |" in card.text
    assert "| overall accuracy | 0.703 |" in card.text  # the same weights at 144 tokens
    assert (
        "budget drawn per batch from 144, 36, 16, 4, 1" in card.text and "| final training loss | 0.8125 |" in card.text
    )

    unscored_text = (unscored.folder / "README.md").read_text()
    assert "model-index" not in unscored_text and "no results at 16 visual tokens" in unscored_text


@pytest.fixture
def fake_hub(monkeypatch):
    """Replaces the network calls of HfApi and the Hub's card validation; records what would be sent."""
    sent = {"create_repo": [], "upload_folder": [], "validate": 0}

    def create_repo(self, repo_id, *, private=None, exist_ok=False, **kwargs):
        sent["create_repo"].append((repo_id, private, exist_ok))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, **kwargs):
        folder = Path(folder_path)
        config = json.loads((folder / "config.json").read_text())
        sent["upload_folder"].append((repo_id, sorted(p.name for p in folder.iterdir()), config["num_visual_tokens"]))

    def validate(self, repo_type=None):
        sent["validate"] += 1

    monkeypatch.setattr(HfApi, "whoami", lambda self, token=None, **kwargs: {"name": "me"})
    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(ModelCard, "validate", validate)
    return sent


def test_push_creates_each_repo_and_uploads_its_folder(checkpoint, tmp_path, fake_hub):
    exports = export_checkpoints(
        [checkpoint], tmp_path / "out", [144, 1], repo_id_pattern="me/delta-tiny-{budget}", push=True, private=True
    )
    assert fake_hub["create_repo"] == [("me/delta-tiny-144", True, True), ("me/delta-tiny-1", True, True)]
    assert [(repo_id, budget) for repo_id, _, budget in fake_hub["upload_folder"]] == [
        ("me/delta-tiny-144", 144),
        ("me/delta-tiny-1", 1),
    ]
    for (_, files, _), export in zip(fake_hub["upload_folder"], exports, strict=True):
        assert {"README.md", "model.safetensors", "config.json", "processor_config.json"} | REMOTE_CODE <= set(files)
        assert files == sorted(p.name for p in export.folder.iterdir())
        assert export.uploaded_to == f"https://huggingface.co/{export.repo_id}"
        assert f'model_id = "{export.repo_id}"' in (export.folder / "README.md").read_text()
    assert fake_hub["validate"] == 2


def test_dry_run_writes_the_folders_without_touching_the_hub(checkpoint, tmp_path, monkeypatch, caplog):
    def no_network(*args, **kwargs):
        raise AssertionError("--dry-run must not call the Hub")

    for name in ("whoami", "create_repo", "upload_folder"):
        monkeypatch.setattr(HfApi, name, no_network)
    caplog.set_level(logging.INFO, logger="delta_llava.hub_cards.export")
    out = tmp_path / "out"
    main(f"--checkpoint {checkpoint} --budgets 4 --output_dir {out} --push --dry-run --repo_id_pattern me/x-4".split())
    assert [p.name for p in out.iterdir()] == ["x-4"]
    assert "Dry run: would upload" in caplog.text and "me/x-4: README.md" in caplog.text


def test_missing_token_fails_before_anything_is_written(checkpoint, tmp_path, fake_hub, monkeypatch):
    def whoami(self, token=None, **kwargs):
        raise LocalTokenNotFoundError("Token is required")

    monkeypatch.setattr(HfApi, "whoami", whoami)
    with pytest.raises(HubPublishError, match=r"No Hugging Face token found.*hf auth login.*HF_TOKEN.*--token"):
        export_checkpoints([checkpoint], tmp_path / "out", [4], repo_id_pattern="me/delta-tiny-{budget}", push=True)
    assert not (tmp_path / "out").exists() and fake_hub["create_repo"] == []


@pytest.mark.parametrize(
    "failure, message",
    [
        (
            HTTPError("Name or service not known"),
            r"Could not reach the Hub while publishing 'me/delta-tiny-1'",
        ),
        (
            HfHubHTTPError("403 Forbidden", response=SimpleNamespace(status_code=403, headers={}, request=None)),
            r"no write access for publishing 'me/delta-tiny-1'.*'me' namespace",
        ),
    ],
)
def test_upload_failure_names_the_repo_and_leaves_no_partial_folder(
    checkpoint, tmp_path, fake_hub, monkeypatch, failure, message
):
    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        if repo_id.endswith("-1"):
            raise failure
        fake_hub["upload_folder"].append(repo_id)

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    out = tmp_path / "out"
    with pytest.raises(HubPublishError, match=message) as raised:
        export_checkpoints([checkpoint], out, [4, 1], repo_id_pattern="me/delta-tiny-{budget}", push=True)
    assert "Budgets 4 were exported and uploaded" in str(raised.value)
    assert [p.name for p in out.iterdir()] == ["delta-tiny-4"]  # finished and uploaded; the failed one left no trace


@pytest.mark.parametrize("layout", ["official", "shared_base"])
def test_card_rows_name_the_layout_and_its_ablations(layout):
    from delta_llava.hub_cards.model_card import _projector_rows

    rows = dict(_projector_rows(tiny_config(delta_layout=layout, use_emhsa=False)))
    assert rows["projector settings"].startswith(f"layout `{layout}`")
    assert rows["ablation"] == "`use_emhsa=False`"


def copy_checkpoint(checkpoint: Path, destination: Path) -> Path:
    shutil.copytree(checkpoint, destination)
    return destination


def test_a_checkpoint_missing_a_projector_tensor_is_refused_with_its_name(checkpoint, tmp_path):
    broken = copy_checkpoint(checkpoint, tmp_path / "broken")
    weights = load_file(broken / "model.safetensors")
    dropped = next(name for name in weights if "multi_modal_projector" in name)
    save_file({name: tensor for name, tensor in weights.items() if name != dropped}, broken / "model.safetensors")
    with pytest.raises(ValueError, match=f"1 missing \\(would be random\\): {re.escape(dropped)}"):
        export_checkpoints([broken], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_weights_of_another_layout_are_refused(checkpoint, tmp_path):
    other = copy_checkpoint(checkpoint, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    config.update(delta_layout="shared_base", ntb_head_dim=None, drop_path_rate=None, ffn_hidden_size=64,
                  spatial_reduction=None)  # fmt: skip
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="missing \\(would be random\\).*unexpected \\(not in this model\\)"):
        load_checkpoint_strictly(other)


def test_a_truncated_weight_file_is_refused(checkpoint, tmp_path):
    cut = copy_checkpoint(checkpoint, tmp_path / "cut")
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="Could not read the weights of .*cut.*truncated"):
        load_checkpoint_strictly(cut)


def test_results_at_budgets_the_checkpoint_cannot_serve_are_refused(checkpoint, tmp_path):
    results = write_results(tmp_path / "results.json")
    results["budgets"]["25"] = results["budgets"]["36"]  # 5x5 does not divide the 24x24 grid
    (tmp_path / "results.json").write_text(json.dumps(results))
    with pytest.raises(ValueError, match="has scores at \\[25\\] visual tokens, which the checkpoint\\(s\\) cannot serve"):
        export_checkpoints([checkpoint], tmp_path / "out", [36], results=tmp_path / "results.json")
    assert not (tmp_path / "out").exists()
