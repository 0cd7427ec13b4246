"""What transformers' own model tests check of a Llava-style model, on Delta-LLaVA (both layouts where it matters)."""

import pytest
import torch

from conftest import TINY_IMAGE_TOKEN_ID, tiny_config
from delta_llava import DeltaLlavaForConditionalGeneration

IMAGE = TINY_IMAGE_TOKEN_ID


def make_model(**overrides):
    torch.manual_seed(0)
    return DeltaLlavaForConditionalGeneration(tiny_config(**overrides)).eval()


def image_inputs(budget: int = 16) -> dict:
    generator = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.tensor([[1, 5, 6] + [IMAGE] * budget + [7, 8]]),
        "pixel_values": torch.randn(1, 3, 48, 48, generator=generator),
    }


@pytest.mark.parametrize("layout", ["official", "shared_base"])
def test_return_dict_false_gives_tuples_from_the_argument_and_from_the_config(layout):
    model = make_model(delta_layout=layout)
    inputs = image_inputs()
    labels = inputs["input_ids"].clone()
    with torch.no_grad():
        as_dict = model(**inputs, labels=labels)
        as_tuple = model(**inputs, labels=labels, return_dict=False)
        base_tuple = model.model(**inputs, return_dict=False)
        model.config.return_dict = False
        from_config = model(**inputs)
    assert isinstance(as_tuple, tuple) and isinstance(base_tuple, tuple) and isinstance(from_config, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)
    torch.testing.assert_close(from_config[0], as_dict.logits)
    torch.testing.assert_close(model.lm_head(base_tuple[0]), as_dict.logits)


def test_placeholders_without_images_are_plain_text():
    model = make_model()
    input_ids = image_inputs()["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
        embeddings = model.get_input_embeddings()(input_ids)
        text_only = model.lm_head(model.model.language_model(inputs_embeds=embeddings).last_hidden_state)
    torch.testing.assert_close(logits, text_only)


def test_assisted_decoding_with_an_assistant_that_sees_no_images():
    model = make_model()
    inputs = image_inputs()
    greedy = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assisted = model.generate(**inputs, max_new_tokens=6, do_sample=False, assistant_model=make_model())
    assert torch.equal(assisted, greedy)


def test_generate_from_inputs_embeds_with_images():
    model = make_model()
    inputs = image_inputs()
    embeddings = model.get_input_embeddings()(inputs["input_ids"])
    from_ids = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    from_embeds = model.generate(inputs_embeds=embeddings, pixel_values=inputs["pixel_values"], max_new_tokens=5, do_sample=False)
    assert torch.equal(from_embeds, from_ids[:, inputs["input_ids"].shape[1]:])


def test_the_tied_lm_head_has_a_tensor_parallel_plan():
    assert DeltaLlavaForConditionalGeneration._tp_plan == {"lm_head": "colwise_gather_output"}
    model = make_model()
    assert model.tp_plan.get("lm_head") == "colwise_gather_output"
