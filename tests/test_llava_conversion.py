"""Starting from transformers' LLaVA-1.5: exact parity with the MLP projector, weights carried over for the others."""

import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from conftest import TINY_IMAGE_TOKEN_ID, tiny_projector_sizes, tiny_text_config, tiny_vision_config
from delta_llava import convert_llava_to_delta_llava


def tiny_llava():
    torch.manual_seed(0)
    vision = {k: v for k, v in tiny_vision_config().items() if k != "model_type"}
    text = {k: v for k, v in tiny_text_config().items() if k != "model_type"}
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision),
        text_config=LlamaConfig(**text),
        image_token_index=TINY_IMAGE_TOKEN_ID,
        image_seq_length=576,
    )
    return LlavaForConditionalGeneration(config).eval()


def llava_inputs():
    torch.manual_seed(1)
    input_ids = torch.tensor([[1, 5, 6] + [TINY_IMAGE_TOKEN_ID] * 576 + [7, 8, 9]])
    return {"input_ids": input_ids, "pixel_values": torch.randn(1, 3, 48, 48)}


@pytest.mark.parametrize("from_folder", [False, True])
def test_mlp_projector_gives_llava_logits(tmp_path, from_folder):
    llava = tiny_llava()
    inputs = llava_inputs()
    if from_folder:
        llava.save_pretrained(tmp_path)
    converted = convert_llava_to_delta_llava(tmp_path if from_folder else llava).eval()
    assert converted.config.projector_type == "mlp2x_gelu" and converted.config.num_visual_tokens == 576
    with torch.no_grad():
        expected, actual = llava(**inputs).logits, converted(**inputs).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_delta_projector_starts_fresh_on_llava_towers():
    llava = tiny_llava()
    converted = convert_llava_to_delta_llava(
        llava, projector_type="delta", num_visual_tokens=144, **tiny_projector_sizes()
    )
    llava_state = llava.state_dict()
    converted_state = converted.state_dict()
    carried = [name for name in llava_state if not name.startswith("model.multi_modal_projector.")]
    assert carried and all(torch.equal(llava_state[n], converted_state[n]) for n in carried)
    assert any(n.endswith("query_projection.base.weight") for n in converted_state)
    input_ids = torch.tensor([[1, 5] + [TINY_IMAGE_TOKEN_ID] * 144 + [7]])
    with torch.no_grad():
        logits = converted(input_ids=input_ids, pixel_values=torch.randn(1, 3, 48, 48)).logits
    assert logits.shape == (1, 147, 96)


def test_full_feature_strategy_is_refused():
    llava = tiny_llava()
    llava.config.vision_feature_select_strategy = "full"
    with pytest.raises(ValueError, match="vision_feature_select_strategy='full'"):
        convert_llava_to_delta_llava(llava)
