"""Bad input, one case per row: each gets the named exception with a message that names the problem (issue 14).

Config fields, model call-time arguments, the chat template, the processor, training arguments and data, launches.
"""

import os
import re

import pytest
import torch
from jinja2.exceptions import TemplateError

from conftest import TINY_IMAGE_TOKEN_ID, TINY_VOCAB_SIZE, tiny_config
from delta_llava import DeltaLlavaForConditionalGeneration
from delta_llava.input_checks import all_finite
from delta_llava.training.arguments import DeltaLlavaDataArguments
from delta_llava.training.elastic_budget import ElasticBudgetCollator
from delta_llava.training.train import check_processes_are_synchronised, load_training_data
from test_processor import image, make_processor
from training_setup import model_arguments

CONFIG_CASES = [  # (overrides of the tiny config, exception, phrase of its message)
    ({"use_emhsa": "false"}, TypeError, "use_emhsa='false' must be a bool"),
    ({"use_delta_projection": 1}, TypeError, "use_delta_projection=1 must be a bool"),
    ({"use_transformer_block": None}, TypeError, "use_transformer_block=None must be a bool"),
    ({"use_object_tokens": "yes"}, TypeError, "use_object_tokens='yes' must be a bool"),
    ({"use_global_token": 0}, TypeError, "use_global_token=0 must be a bool"),
    ({"tie_word_embeddings": "no"}, TypeError, "tie_word_embeddings='no' must be a bool"),
    ({"projector_hidden_act": "gelu_fastest"}, ValueError, "not an activation transformers knows"),
    ({"projector_hidden_act": 3}, ValueError, "projector_hidden_act=3 is not an activation"),
    ({"image_token_id": -1}, ValueError, "image_token_id=-1 must be a token id"),
    ({"image_token_id": TINY_VOCAB_SIZE + 1}, ValueError, f"an integer in [0, {TINY_VOCAB_SIZE}]"),
    ({"image_token_id": 1.5}, ValueError, "image_token_id=1.5 must be a token id"),
    ({"image_token_id": True}, ValueError, "image_token_id=True must be a token id"),
    ({"vision_config": "clip"}, TypeError, "vision_config must be a dict or a transformers config"),
    ({"text_config": 42}, TypeError, "text_config must be a dict or a transformers config"),
    ({"projector_type": "qformer"}, ValueError, "projector_type='qformer' is unknown"),
    ({"delta_layout": "paper"}, ValueError, "delta_layout='paper' is unknown"),
    ({"num_visual_tokens": 10}, ValueError, "num_visual_tokens=10 is not possible"),
    ({"num_visual_tokens": 0}, ValueError, "num_visual_tokens=0 is not possible"),
    ({"num_visual_tokens": "16"}, ValueError, "num_visual_tokens='16' is not possible"),
    ({"memory_layers": [99]}, ValueError, "memory_layers=[99] must be hidden-state indices"),
    ({"memory_layers": []}, ValueError, "memory_layers=[] must be hidden-state indices"),
    ({"vision_feature_layer": 1.0}, ValueError, "vision_feature_layer=1.0 must be hidden-state indices"),
    ({"projector_hidden_size": 0}, ValueError, "projector_hidden_size=0 must be a positive integer"),
    ({"delta_rank": -4}, ValueError, "delta_rank=-4 must be a positive integer"),
    ({"max_object_tokens": -1}, ValueError, "max_object_tokens=-1 must be an integer >= 0"),
    ({"window_size": 2}, ValueError, "window_size"),
    ({"ffn_hidden_size": 64}, ValueError, "ffn_hidden_size"),
    ({"delta_layout": "shared_base", "ntb_head_dim": 8, "ffn_hidden_size": 64}, ValueError, "ntb_head_dim"),
    ({"drop_path_rate": 1.5}, ValueError, "drop_path_rate=1.5 must be a number in [0, 1)"),
    ({"delta_rank": 4096}, ValueError, "delta_rank=4096 is larger than the widths it updates"),
]


@pytest.mark.parametrize("overrides, error, phrase", CONFIG_CASES, ids=[str(case[0]) for case in CONFIG_CASES])
def test_bad_config_field(overrides, error, phrase):
    with pytest.raises(error, match=re.escape(phrase)):
        tiny_config(**overrides)


def test_an_image_token_beyond_the_embeddings_is_named_at_call_time():
    model = DeltaLlavaForConditionalGeneration(tiny_config(image_token_id=TINY_VOCAB_SIZE))  # config before a resize
    ids = torch.tensor([[1] + [TINY_VOCAB_SIZE] * 16])
    with pytest.raises(ValueError, match=f"image_token_id={TINY_VOCAB_SIZE} is beyond the language model's"):
        model(input_ids=ids, pixel_values=torch.randn(1, 3, 32, 32))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DeltaLlavaForConditionalGeneration(tiny_config(use_object_tokens=True)).eval()


def model_inputs(config, **changes):
    size = config.vision_config.image_size
    ids = torch.tensor([[1] + [TINY_IMAGE_TOKEN_ID] * config.num_visual_tokens + [5, 6]])
    inputs = {"input_ids": ids, "pixel_values": torch.randn(1, 3, size, size)}
    inputs.update(changes)
    return {name: value for name, value in inputs.items() if value is not None}


def pixels_with(value, size):
    pixels = torch.randn(1, 3, size, size)
    pixels[0, 1, size // 2, size // 3] = value
    return pixels


MODEL_CASES = [  # (name, changes to the inputs as a function of the config, exception, phrase)
    ("uint8 pixels", lambda c: {"pixel_values": torch.zeros(1, 3, 32, 32, dtype=torch.uint8)}, TypeError,
     "pixel_values has dtype torch.uint8"),
    ("NaN pixels", lambda c: {"pixel_values": pixels_with(float("nan"), c.vision_config.image_size)}, ValueError,
     "NaN or infinite"),
    ("infinite pixels", lambda c: {"pixel_values": pixels_with(float("-inf"), c.vision_config.image_size)}, ValueError,
     "NaN or infinite"),
    ("pixels of the wrong size", lambda c: {"pixel_values": torch.randn(1, 3, 20, 20)}, ValueError,
     "pixel_values has shape (1, 3, 20, 20)"),
    ("pixels without a batch axis", lambda c: {"pixel_values": torch.randn(3, 32, 32)}, ValueError,
     "pixel_values has shape (3, 32, 32)"),
    ("pixels as a list", lambda c: {"pixel_values": [[0.0]]}, TypeError, "pixel_values must be a torch.Tensor"),
    ("an id beyond the vocabulary", lambda c: {"input_ids": torch.tensor([[1, TINY_VOCAB_SIZE + 3]]), "pixel_values": None},
     ValueError, f"vocabulary has {TINY_VOCAB_SIZE} rows"),
    ("a negative id", lambda c: {"input_ids": torch.tensor([[1, -5]]), "pixel_values": None}, ValueError,
     "input_ids holds ids from -5"),
    ("an impossible budget", lambda c: {"num_visual_tokens": 10}, ValueError, "num_visual_tokens=10 is not possible"),
    ("negative object tokens", lambda c: {"max_object_tokens": -2}, ValueError, "max_object_tokens=-2 must be"),
    ("NaN object masks", lambda c: {"object_masks": torch.full((1, 2, 8, 8), float("nan"))}, ValueError,
     "object_masks holds NaN"),
    ("object masks without a mask axis", lambda c: {"object_masks": torch.ones(1, 8, 8)}, ValueError,
     "object_masks must be a tensor (I, K, h, w)"),
    ("object masks for another number of images", lambda c: {"object_masks": torch.ones(2, 1, 8, 8)}, ValueError,
     "object_masks has masks for 2 images"),
    ("ids and embeddings together", lambda c: {"inputs_embeds": torch.zeros(1, 3, 32)}, ValueError,
     "exactly one of input_ids or inputs_embeds"),
    ("placeholders for another budget", lambda c: {"input_ids": torch.tensor([[1] + [TINY_IMAGE_TOKEN_ID] * 4])},
     ValueError, "image placeholder tokens"),
    ("a budget other than the processor's", lambda c: {"num_visual_tokens": 4, "visual_token_budget": 16}, ValueError,
     "wrote image placeholders for num_visual_tokens=16"),
]  # fmt: skip


@pytest.mark.parametrize("name, changes, error, phrase", MODEL_CASES, ids=[case[0] for case in MODEL_CASES])
def test_bad_model_call(model, name, changes, error, phrase):
    with pytest.raises(error, match=re.escape(phrase)):
        model(**model_inputs(model.config, **changes(model.config)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_all_finite_finds_one_bad_value_anywhere(dtype):
    for value, finite in [(float("nan"), False), (float("inf"), False), (-float("inf"), False), (6e4, True)]:
        for where in (0, 777, -1):
            values = torch.randn(4, 3, 9, 9).to(dtype)
            values.view(-1)[where] = value
            assert all_finite(values) is finite, (value, where)
    assert all_finite(torch.zeros(0, dtype=dtype)) and all_finite(torch.tensor([2**40]))  # empty, integer: nothing to find


def user(content):
    return [{"role": "user", "content": content}]


TEMPLATE_CASES = [  # (conversation, phrase)
    ([{"role": "user"}], "Message 0 (user) has no content"),
    (user(None), "Message 0 (user) has no content"),
    (user([{"text": "hi"}]), "has a part of type"),
    (user([{"type": "video", "video": "clip.mp4"}, {"type": "text", "text": "what"}]), "has a part of type video"),
    (user([{"type": "text"}]), "has a text part without a string text field"),
    ([{"role": "tool", "content": "x"}], "Unsupported role tool"),
    ([{"content": "what"}], "Message 0 has no role"),
]


@pytest.mark.parametrize("conversation, phrase", TEMPLATE_CASES, ids=[case[1] for case in TEMPLATE_CASES])
def test_chat_template_refuses_what_it_cannot_render(conversation, phrase):
    with pytest.raises(TemplateError, match=re.escape(phrase)):
        make_processor().apply_chat_template(conversation, tokenize=False)


def test_empty_conversations_are_refused():
    processor = make_processor()
    for conversation in ([], [[]]):  # one empty conversation, a batch holding one
        with pytest.raises(ValueError, match="The conversation is empty"):
            processor.apply_chat_template(conversation, tokenize=False)


def test_bad_processor_arguments():
    processor = make_processor()
    with pytest.raises(ValueError, match="num_visual_tokens=10 is not a valid budget"):
        processor(images=[image()], text="<image> what", num_visual_tokens=10)
    with pytest.raises(ValueError, match="max_object_tokens=-1 must be an integer >= 0"):
        processor(images=[image()], text="<image> what", max_object_tokens=-1)
    with pytest.raises(ValueError, match="num_visual_tokens=7 is not a valid budget"):
        make_processor(num_visual_tokens=7)


def test_bad_training_arguments_and_data(tmp_path, monkeypatch):
    parts = {"vision_tower": "tower", "language_model": "lm", "dataset_path": "data"}
    with pytest.raises(ValueError, match="--stage 'align' is unknown"):
        model_arguments(parts, stage="align")
    with pytest.raises(ValueError, match="--use_lora/--use_qlora apply to --stage finetune"):
        model_arguments(parts, stage="pretrain", use_lora=True)
    (tmp_path / "data.json").write_text("[]")
    with pytest.raises(ValueError, match="is LLaVA JSON: pass --image_folder"):
        load_training_data(DeltaLlavaDataArguments(dataset_path=str(tmp_path / "data.json")))
    with pytest.raises(FileNotFoundError, match="is neither a datasets folder nor a LLaVA"):
        load_training_data(DeltaLlavaDataArguments(dataset_path=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="elastic_budgets is empty"):
        ElasticBudgetCollator(lambda examples: examples, make_processor(), [])
    monkeypatch.setitem(os.environ, "WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="started 2 processes .* but the trainer sees 1"):
        check_processes_are_synchronised(1)
