"""A saved checkpoint carries its code: it loads through the Auto classes where the project is not installed."""

import json

import torch

from conftest import TINY_IMAGE_TOKEN_ID, tiny_config
from delta_llava import DeltaLlavaForConditionalGeneration
from isolated_python import run_without_project

REMOTE_FILES = {
    "configuration_delta_llava.py",
    "modeling_delta_llava.py",
    "delta_projection.py",
    "projector_layers.py",
    "projector_delta.py",
    "projector_baselines.py",
    "windowed_cross_attention.py",
    "object_tokens.py",
    "input_checks.py",
}


def test_saved_folder_has_code_safetensors_and_auto_map(tmp_path):
    DeltaLlavaForConditionalGeneration(tiny_config()).save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert REMOTE_FILES <= names and "model.safetensors" in names
    assert "conversion.py" not in names
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_delta_llava.DeltaLlavaConfig",
        "AutoModel": "modeling_delta_llava.DeltaLlavaModel",
        "AutoModelForImageTextToText": "modeling_delta_llava.DeltaLlavaForConditionalGeneration",
    }


def test_auto_classes_load_in_a_process_without_the_project(tmp_path):
    torch.manual_seed(0)
    model = DeltaLlavaForConditionalGeneration(tiny_config(use_global_token=True)).eval()
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    input_ids = torch.tensor([[1, 5] + [TINY_IMAGE_TOKEN_ID] * 17 + [7]])
    pixels = torch.randn(1, 3, 48, 48)
    torch.save({"input_ids": input_ids, "pixel_values": pixels}, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(input_ids=input_ids, pixel_values=pixels).logits
    torch.save(expected, tmp_path / "expected.pt")

    result = run_without_project(
        """
        import torch
        from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText
        config = AutoConfig.from_pretrained("checkpoint", trust_remote_code=True)
        assert type(config).__name__ == "DeltaLlavaConfig" and config.use_global_token
        model = AutoModelForImageTextToText.from_pretrained("checkpoint", trust_remote_code=True).eval()
        assert type(model).__name__ == "DeltaLlavaForConditionalGeneration", type(model)
        assert not type(model).__module__.startswith("delta_llava")
        inputs = torch.load("inputs.pt")
        with torch.no_grad():
            logits = model(**inputs).logits
        torch.testing.assert_close(logits, torch.load("expected.pt"), rtol=0, atol=1e-5)
        base = AutoModel.from_pretrained("checkpoint", trust_remote_code=True).eval()
        assert type(base).__name__ == "DeltaLlavaModel"
        with torch.no_grad():
            hidden = base(**inputs).last_hidden_state
        torch.testing.assert_close(model.lm_head(hidden), logits)
        print("REMOTE-OK")
        """,
        cwd=str(tmp_path),
    )
    assert "REMOTE-OK" in result.stdout
