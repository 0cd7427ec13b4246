"""`delta-llava-resave`: an old checkpoint is written again with the current remote code, weights unchanged."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, CLIPImageProcessor

from conftest import tiny_config
from delta_llava import DeltaLlavaForConditionalGeneration
from delta_llava.hub_cards.resave import main as resave_main
from delta_llava.hub_cards.resave import resave_checkpoint
from delta_llava.processing import DeltaLlavaProcessor
from delta_llava.training.local_tokenizer import build_word_level_tokenizer

LEGACY_CHECKPOINT = Path(__file__).parent / "fixtures" / "shared_base_checkpoint_v0"


def test_a_checkpoint_saved_before_the_layouts_gets_the_current_code_and_the_same_logits(tmp_path):
    resave_main([str(LEGACY_CHECKPOINT), str(tmp_path / "new")])
    new = tmp_path / "new"
    assert "class BaseWeight" in (new / "delta_projection.py").read_text()  # this version's remote code
    assert json.loads((new / "config.json").read_text())["delta_layout"] == "shared_base"
    model = AutoModelForImageTextToText.from_pretrained(new, trust_remote_code=True).eval()
    saved = load_file(LEGACY_CHECKPOINT / "expected_logits.safetensors")
    with torch.no_grad():
        logits = model(input_ids=saved["input_ids"], pixel_values=saved["pixel_values"], object_masks=saved["object_masks"]).logits
    torch.testing.assert_close(logits, saved["logits"], rtol=0, atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_the_processor_is_resaved_with_the_budgets_the_model_allows(tmp_path):
    torch.manual_seed(0)
    tokenizer = build_word_level_tokenizer(["what", "is", "it"])
    model = DeltaLlavaForConditionalGeneration(tiny_config(image_token_id=tokenizer.image_token_id))
    model.save_pretrained(tmp_path / "old")
    image_processor = CLIPImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
    DeltaLlavaProcessor(image_processor, tokenizer, num_visual_tokens=16).save_pretrained(tmp_path / "old")
    assert AutoProcessor.from_pretrained(tmp_path / "old", trust_remote_code=True).allowed_visual_token_counts is None

    resave_checkpoint(tmp_path / "old", tmp_path / "new")
    processor = AutoProcessor.from_pretrained(tmp_path / "new", trust_remote_code=True)
    assert processor.allowed_visual_token_counts == [576, 144, 64, 36, 16, 9, 4, 1]
    with pytest.raises(ValueError, match="Allowed values"):
        processor(images=[torch.rand(3, 48, 48)], text="<image> what is it", num_visual_tokens=25)


def test_a_folder_without_a_checkpoint_or_the_same_folder_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resave_checkpoint(tmp_path, tmp_path / "new")
    with pytest.raises(ValueError, match="new destination folder"):
        resave_checkpoint(LEGACY_CHECKPOINT, LEGACY_CHECKPOINT)
    assert not (tmp_path / "new").exists()
