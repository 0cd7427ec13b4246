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


def test_image_features_come_as_the_towers_output_with_pooler_output():
    model = make_model(use_global_token=True)
    model.set_attn_implementation("eager")  # SDPA returns no attention weights
    pixels = image_inputs()["pixel_values"]
    with torch.no_grad():
        outputs = model.get_image_features(pixels, num_visual_tokens=4, output_attentions=True)
        as_tuple = model.get_image_features(pixels, num_visual_tokens=4, return_dict=False)
    assert [tuple(f.shape) for f in outputs.pooler_output] == [(1 + 4, 48)]
    assert len(outputs.hidden_states) == model.config.vision_config.num_hidden_layers + 1
    assert len(outputs.attentions) == model.config.vision_config.num_hidden_layers
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], outputs.last_hidden_state)
    torch.testing.assert_close(as_tuple[1][0], outputs.pooler_output[0])


@pytest.mark.parametrize("projector_type", ["delta", "mlp2x_gelu", "tokenpacker", "avgpool"])
def test_image_features_keep_only_the_hidden_states_the_projector_reads(projector_type):
    model = make_model(projector_type=projector_type, num_visual_tokens=576 if projector_type == "mlp2x_gelu" else 16)
    pixels = image_inputs()["pixel_values"]
    with torch.no_grad():
        kept = model.get_image_features(pixels)
        every = model.get_image_features(pixels, output_hidden_states=True)
    read = set(model.model.hidden_states_read())
    depth = model.config.vision_config.num_hidden_layers + 1
    assert read == {model.config.vision_feature_layer % depth} | (
        {layer % depth for layer in model.config.memory_layers} if projector_type in ("delta", "tokenpacker") else set()
    )
    assert [index for index, state in enumerate(kept.hidden_states) if state is not None] == sorted(read)
    assert all(state is not None for state in every.hidden_states) and len(every.hidden_states) == depth
    for index in read:
        torch.testing.assert_close(kept.hidden_states[index], every.hidden_states[index])
    torch.testing.assert_close(kept.pooler_output[0], every.pooler_output[0])


def test_output_attentions_set_on_the_config_returns_the_towers_attentions():
    model = make_model()
    model.set_attn_implementation("eager")
    pixels = image_inputs()["pixel_values"]
    with torch.no_grad():
        assert model.get_image_features(pixels).attentions is None
        model.config.output_attentions = True
        from_config = model.get_image_features(pixels).attentions
        model.config.output_attentions = False
        model.config.vision_config.output_attentions = True
        from_vision_config = model.get_image_features(pixels).attentions
    assert len(from_config) == len(from_vision_config) == model.config.vision_config.num_hidden_layers
    torch.testing.assert_close(from_config, from_vision_config)


@pytest.mark.parametrize("layout", ["official", "shared_base"])
def test_images_with_different_budgets_in_one_call_equal_each_image_alone(layout):
    """A serving engine batches images of requests with different budgets: `visual_token_budget` has one per image."""
    model = make_model(delta_layout=layout, use_global_token=True)
    pixels = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    budgets = [16, 4, 16]
    with torch.no_grad():
        mixed = model.get_image_features(pixels, visual_token_budget=torch.tensor(budgets)).pooler_output
        alone = [model.get_image_features(pixels[i : i + 1], num_visual_tokens=b).pooler_output[0] for i, b in enumerate(budgets)]
    assert [tuple(tokens.shape) for tokens in mixed] == [(17, 48), (5, 48), (17, 48)]
    for together, single in zip(mixed, alone):
        torch.testing.assert_close(together, single)
    with pytest.raises(ValueError, match="2 budgets for 3 images"):
        model.get_image_features(pixels, visual_token_budget=torch.tensor([16, 4]))
    with pytest.raises(ValueError, match="num_visual_tokens=25 is not possible"):
        model.get_image_features(pixels[:1], visual_token_budget=torch.tensor([25]))


def test_static_cache_generation_equals_the_dynamic_cache():
    model = make_model()
    inputs = image_inputs()
    dynamic = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    static = model.generate(**inputs, max_new_tokens=6, do_sample=False, cache_implementation="static")
    assert torch.equal(static, dynamic)


def test_decoding_forward_compiles_with_fullgraph_and_matches_eager():
    """What `_can_compile_fullgraph` promises: the forward of text and decoding steps (no pixel_values) compiles
    without graph breaks. Image prefill does not: the CLIP tower's hidden-state capture in transformers holds a lock
    context manager that TorchDynamo cannot trace (checked here, so the README's statement stays true)."""
    assert DeltaLlavaForConditionalGeneration._can_compile_fullgraph
    model = make_model()
    input_ids = torch.tensor([[1, 5, 6, IMAGE, 7, 8]])
    torch._dynamo.reset()
    compiled = torch.compile(model.forward, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(input_ids=input_ids).logits, model(input_ids=input_ids).logits)
        with pytest.raises(Exception, match="Unsupported context manager"):
            compiled(**image_inputs())


def test_the_processor_records_its_budget_and_the_model_checks_it():
    from delta_llava.processing import DeltaLlavaProcessor
    from delta_llava.training.local_tokenizer import build_word_level_tokenizer
    from transformers import CLIPImageProcessor

    model = make_model()
    processor = DeltaLlavaProcessor(
        CLIPImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48}),
        build_word_level_tokenizer(["what", "is", "it"]),
        num_visual_tokens=4,
    )
    model.config.image_token_id = processor.image_token_id
    inputs = processor(images=[torch.rand(3, 48, 48)], text="<image> what is it")
    assert inputs["visual_token_budget"].tolist() == [4]  # one budget per image, which serving engines slice
    with torch.no_grad():
        implicit = model(**inputs).logits  # the model projects to the processor's budget
        explicit = model(**inputs, num_visual_tokens=4).logits
        torch.testing.assert_close(implicit, explicit)
        with pytest.raises(ValueError, match=r"placeholders for num_visual_tokens=4 but the model was called with "
                                             r"num_visual_tokens=16"):  # fmt: skip
            model(**inputs, num_visual_tokens=16)
    assert model.generate(**inputs, max_new_tokens=3, do_sample=False).shape[1] == inputs["input_ids"].shape[1] + 3


def test_attentions_and_hidden_states_of_the_language_model_on_request():
    model = make_model()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        eager = model(**image_inputs(), output_attentions=True, output_hidden_states=True)
    layers = model.config.text_config.num_hidden_layers
    length = image_inputs()["input_ids"].shape[1]
    assert len(eager.attentions) == layers and eager.attentions[0].shape[-2:] == (length, length)
    assert len(eager.hidden_states) == layers + 1
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        torch.testing.assert_close(model(**image_inputs()).logits, eager.logits, rtol=1e-4, atol=1e-5)
