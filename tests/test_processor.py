"""DeltaLlavaProcessor: placeholder expansion, batching, chat template, save/load (also without the project), errors."""

import functools
import json
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
import transformers
from packaging import version
from transformers import AutoProcessor, AutoTokenizer, CLIPImageProcessor

from delta_llava.processing import DeltaLlavaProcessor
from delta_llava.training.local_tokenizer import build_word_level_tokenizer
from isolated_python import run_without_project

WORDS = "what is in the image describe it a red circle and square compare these two pictures be brief".split()
SIDE = 16


@functools.cache
def tokenizer():
    return build_word_level_tokenizer(WORDS)


def make_processor(**settings) -> DeltaLlavaProcessor:
    image_processor = CLIPImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE})
    settings.setdefault("num_visual_tokens", 4)
    return DeltaLlavaProcessor(image_processor, tokenizer(), **settings)


def image(color=(255, 0, 0), size=(20, 12)) -> PIL.Image.Image:
    return PIL.Image.new("RGB", size, color)


def image_id() -> int:
    return tokenizer().image_token_id


def image_counts(inputs) -> list[int]:
    return (inputs["input_ids"] == image_id()).sum(dim=1).tolist()


def mask_stack(num_valid: int, num_empty: int = 0, size: int = 32) -> np.ndarray:
    """`num_valid` non-empty masks (one small square each), then `num_empty` empty ones."""
    stack = np.zeros((num_valid + num_empty, size, size), bool)
    for index in range(num_valid):
        stack[index, index : index + 2, 0:2] = True
    return stack


# ---- placeholder expansion -------------------------------------------------------------------------------------


def test_one_image_expands_to_the_budget_in_place():
    processor = make_processor()
    inputs = processor(images=image(), text="what is <image> the image")
    ids = inputs["input_ids"][0].tolist()
    vocab = tokenizer().get_vocab()
    words = [vocab["what"], vocab["is"]], [vocab["the"], vocab["image"]]
    assert ids == [tokenizer().bos_token_id, *words[0]] + [image_id()] * 4 + words[1]
    assert inputs["pixel_values"].shape == (1, 3, SIDE, SIDE) and inputs["pixel_values"].dtype == torch.float32
    assert inputs["attention_mask"].tolist() == [[1] * len(ids)]
    assert set(inputs) == {"input_ids", "attention_mask", "pixel_values", "visual_token_budget"}


@pytest.mark.parametrize("budget", [1, 9, 16, 576])
def test_call_time_budget_times_images(budget):
    inputs = make_processor()(images=[image(), image()], text="<image> and <image>", num_visual_tokens=budget)
    assert image_counts(inputs) == [2 * budget]
    assert inputs["pixel_values"].shape[0] == 2


def test_global_token_adds_one_per_image():
    inputs = make_processor(use_global_token=True)(images=[image(), image()], text="<image> <image>")
    assert image_counts(inputs) == [2 * (1 + 4)]


def test_object_tokens_keep_min_of_valid_masks_and_max_object_tokens_per_image():
    processor = make_processor(use_object_tokens=True, max_object_tokens=2, use_global_token=True, mask_size=8)
    arguments = {
        "images": [image(), image(), image()],
        "text": ["<image> a", "<image> red", "<image> circle"],
        "object_masks": [mask_stack(3), mask_stack(1, num_empty=2), mask_stack(0, num_empty=1)],
    }
    inputs = processor(**arguments)
    assert image_counts(inputs) == [1 + 4 + 2, 1 + 4 + 1, 1 + 4 + 0]
    assert inputs["object_masks"].shape == (3, 3, 8, 8) and inputs["object_masks"].dtype == torch.float32
    assert image_counts(processor(**arguments, max_object_tokens=5)) == [1 + 4 + 3, 1 + 4 + 1, 1 + 4 + 0]
    off = processor(**arguments, max_object_tokens=0)
    assert image_counts(off) == [5, 5, 5] and "object_masks" in off


def test_object_tokens_in_one_sample_add_up_and_follow_the_nesting_of_images():
    processor = make_processor(use_object_tokens=True, max_object_tokens=8, mask_size=8)
    inputs = processor(
        images=[[image(), image()], [image()]],
        text=["<image> compare <image>", "describe <image>"],
        object_masks=[[mask_stack(2), mask_stack(5)], [mask_stack(1)]],
    )
    assert image_counts(inputs) == [(4 + 2) + (4 + 5), 4 + 1]


def test_object_tokens_without_masks_add_nothing():
    inputs = make_processor(use_object_tokens=True)(images=image(), text="<image>")
    assert image_counts(inputs) == [4] and "object_masks" not in inputs


def test_object_masks_as_one_4d_tensor():
    processor = make_processor(use_object_tokens=True, mask_size=8)
    masks = torch.zeros(2, 3, 8, 8)
    masks[0, :2, 0, 0] = 1
    masks[1, :1, 0, 0] = 1
    inputs = processor(images=[image(), image()], text=["<image>", "<image>"], object_masks=masks)
    assert image_counts(inputs) == [6, 5]


def test_the_processor_computes_object_masks_with_an_extractor_on_the_images_as_given():
    """`object_mask_extractor` runs on the images before padding; the result equals passing its masks yourself."""
    seen_sizes = []

    def masks_of(width: int, height: int, count: int) -> np.ndarray:
        stack = np.zeros((count, height, width), bool)
        for index in range(count):
            stack[index, index : index + 2, 0:2] = True
        return stack

    def extractor(images):
        seen_sizes.extend(picture.size for picture in images)
        return [SimpleNamespace(masks=torch.as_tensor(masks_of(*p.size, n))) for n, p in enumerate(images, start=1)]

    processor = make_processor(use_object_tokens=True, mask_size=8, pad_to_square=True)
    images, texts = [image(size=(20, 12)), image(size=(12, 20))], ["<image> a", "<image> red"]
    computed = processor(images=images, text=texts, object_mask_extractor=extractor)
    given = processor(images=images, text=texts, object_masks=[masks_of(20, 12, 1), masks_of(12, 20, 2)])
    assert seen_sizes == [(20, 12), (12, 20)]
    assert image_counts(computed) == [4 + 1, 4 + 2]
    for key in ("input_ids", "pixel_values", "object_masks"):
        torch.testing.assert_close(computed[key], given[key])
    with pytest.raises(ValueError, match="not both"):
        processor(images=images, text=texts, object_masks=given["object_masks"], object_mask_extractor=extractor)


# ---- batches and several images --------------------------------------------------------------------------------


def test_batch_is_left_padded_by_default():
    inputs = make_processor()(images=[image(), image()], text=["<image> what is in the image", "<image> describe"])
    pad = tokenizer().pad_token_id
    assert inputs["input_ids"].shape == (2, 1 + 4 + 5)
    assert inputs["input_ids"][1, :4].tolist() == [pad] * 4
    assert inputs["attention_mask"][1].tolist() == [0] * 4 + [1] * 6
    assert inputs["attention_mask"][0].tolist() == [1] * 10
    assert image_counts(inputs) == [4, 4]


def test_padding_side_can_be_chosen_per_call():
    inputs = make_processor()(images=[image(), image()], text=["<image> what is it", "<image>"], padding_side="right")
    assert inputs["attention_mask"][1].tolist() == [1] * 5 + [0] * 3


def test_several_images_per_sample_flat_or_nested():
    processor = make_processor()
    red, blue, green = image((255, 0, 0)), image((0, 0, 255)), image((0, 255, 0))
    texts = ["compare <image> and <image>", "describe <image>"]
    flat = processor(images=[red, blue, green], text=texts)
    nested = processor(images=[[red, blue], [green]], text=texts)
    assert image_counts(flat) == image_counts(nested) == [8, 4]
    torch.testing.assert_close(flat["pixel_values"], nested["pixel_values"])
    # images keep placeholder order: the third image is the green one
    assert flat["pixel_values"][2, 1].mean() > flat["pixel_values"][2, 0].mean()


def test_text_without_images_and_images_without_text():
    processor = make_processor()
    assert set(processor(text="what is it")) == {"input_ids", "attention_mask"}
    only_images = processor(images=[image(), np.zeros((4, 4, 3), np.uint8)])
    assert set(only_images) == {"pixel_values"} and only_images["pixel_values"].shape == (2, 3, SIDE, SIDE)


def test_empty_image_list_for_a_sample_without_placeholder():
    inputs = make_processor()(images=[[image()], []], text=["<image> a", "a red circle"])
    assert image_counts(inputs) == [4, 0] and inputs["pixel_values"].shape[0] == 1


def test_truncation_that_keeps_every_image_token_is_allowed():
    inputs = make_processor()(images=image(), text="<image> what is in the image", truncation=True, max_length=7)
    assert inputs["input_ids"].shape[1] == 7 and image_counts(inputs) == [4]


def test_return_tensors_numpy_and_lists():
    processor = make_processor()
    as_numpy = processor(images=image(), text="<image>", return_tensors="np")
    assert isinstance(as_numpy["input_ids"], np.ndarray) and isinstance(as_numpy["pixel_values"], np.ndarray)
    as_lists = processor(text=["<image> a", "<image>"], images=[image(), image()], return_tensors=None)
    assert isinstance(as_lists["input_ids"], list)


def test_decode_and_model_input_names():
    processor = make_processor()
    ids = processor(text="a red circle")["input_ids"]
    assert processor.batch_decode(ids, skip_special_tokens=True) == ["a red circle"]
    assert processor.decode(ids[0]) == "<s> a red circle"
    assert processor.model_input_names == ["input_ids", "attention_mask", "pixel_values", "visual_token_budget"]
    assert make_processor(use_object_tokens=True).model_input_names[-2:] == ["object_masks", "object_embeddings"]


def test_local_tokenizer_special_tokens_decoding_and_save_load(tmp_path):
    built = build_word_level_tokenizer(["a red circle, it's red."], extra_special_tokens=["<mask>"])
    ids = {name: getattr(built, f"{name}_token_id") for name in ("pad", "bos", "eos", "unk", "image")}
    assert ids == {"pad": 0, "bos": 1, "eos": 2, "unk": 3, "image": 4}
    assert built.convert_tokens_to_ids("<mask>") == 5 and built.padding_side == "left"
    encoded = built("USER: a red circle, it's red. ASSISTANT: zebra</s>")["input_ids"]
    assert encoded[0] == 1 and 3 in encoded  # <s> first; "zebra" is unknown
    assert built.decode(encoded, skip_special_tokens=True) == "USER: a red circle, it's red. ASSISTANT:"
    built.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded("a red <image>")["input_ids"] == built("a red <image>")["input_ids"]
    assert loaded.image_token == "<image>" and loaded.padding_side == "left"


# ---- chat template ---------------------------------------------------------------------------------------------

CONVERSATION = [
    {"role": "system", "content": "be brief."},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is in the image?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]},
    {
        "role": "user",
        "content": [{"type": "text", "text": "compare"}, {"type": "image"}, {"type": "text", "text": "these"}],
    },
]


def test_chat_template_renders_llava_1_5_format():
    processor = make_processor()
    prompt = processor.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    assert prompt == (
        "<s>be brief. USER: <image>\nwhat is in the image? ASSISTANT: a red circle</s>"
        "USER: compare <image>\nthese ASSISTANT:"
    )
    plain = processor.apply_chat_template([{"role": "user", "content": "describe it"}])
    assert plain == "<s>USER: describe it "


@pytest.mark.skipif(
    version.parse(transformers.__version__) < version.parse("5.20"),
    reason="transformers 5.19's apply_chat_template reads images from the messages, not from processor_kwargs",
)
def test_chat_template_tokenized_with_images_and_assistant_mask():
    processor = make_processor()
    images = [image(), image((0, 0, 255))]
    inputs = processor.apply_chat_template(
        CONVERSATION, add_generation_prompt=True, tokenize=True, return_dict=True, processor_kwargs={"images": images}
    )
    assert image_counts(inputs) == [8] and inputs["pixel_values"].shape[0] == 2
    assert (inputs["input_ids"][0] == tokenizer().bos_token_id).sum() == 1

    training = processor.apply_chat_template(
        [CONVERSATION[:3]], tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
        processor_kwargs={"images": [images[:1]]},
    )
    ids, mask = training["input_ids"][0].tolist(), training["assistant_masks"][0]
    trained = [token for token, keep in zip(ids, mask) if keep]
    assert tokenizer().decode(trained) == "a red circle </s>"


def test_trl_vision_collator_trains_on_assistant_tokens_only():
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    collator = DataCollatorForVisionLanguageModeling(make_processor(), assistant_only_loss=True)
    examples = [
        {"images": [image()], "messages": [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}]}
        for ask, answer in (("what is it?", "a red circle"), ("describe", "a square"))
    ]
    batch = collator(examples)
    assert image_counts(batch) == [4, 4] and batch["pixel_values"].shape[0] == 2
    trained = [[token for token in row if token != -100] for row in batch["labels"].tolist()]
    assert tokenizer().batch_decode(trained) == ["a red circle </s>", "a square </s>"]


def test_rendered_prompt_passed_to_the_processor_gets_one_bos():
    processor = make_processor()
    prompt = processor.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True)
    inputs = processor(images=image(), text=prompt)
    assert (inputs["input_ids"][0] == tokenizer().bos_token_id).sum() == 1


def test_unknown_role_is_refused():
    with pytest.raises(Exception, match="Unsupported role tool: use system, user or assistant"):
        make_processor().apply_chat_template([{"role": "tool", "content": "x"}])


# ---- save / load -----------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    settings = {
        "num_visual_tokens": 9,
        "use_global_token": True,
        "use_object_tokens": True,
        "max_object_tokens": 3,
        "image_token": "<image>",
        "mask_size": 8,
    }
    processor = make_processor(**settings)
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["auto_map"] == {"AutoProcessor": "processing_delta_llava.DeltaLlavaProcessor"}
    assert {name: config[name] for name in settings} == settings
    assert {"processing_delta_llava.py", "image_inputs.py", "object_mask_inputs.py", "chat_template.jinja"} <= {
        path.name for path in tmp_path.iterdir()
    }
    loaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__name__ == "DeltaLlavaProcessor"
    assert loaded.chat_template == processor.chat_template
    arguments = {
        "images": [image(), image()],
        "text": ["<image> a", "red <image>"],
        "object_masks": [mask_stack(2), mask_stack(1)],
    }
    expected, actual = processor(**arguments), loaded(**arguments)
    assert set(expected) == set(actual)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name])


def test_loads_and_runs_in_a_process_without_the_project(tmp_path):
    processor = make_processor(num_visual_tokens=9, use_global_token=True)
    processor.save_pretrained(tmp_path / "checkpoint")
    expected = processor(images=image(), text="<image> what is it")
    torch.save(dict(expected), tmp_path / "expected.pt")
    result = run_without_project(
        """
        import sys
        import PIL.Image, torch
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained("checkpoint", trust_remote_code=True)
        assert type(processor).__name__ == "DeltaLlavaProcessor"
        assert type(processor).__module__.startswith("transformers_modules."), type(processor).__module__
        assert processor.num_visual_tokens == 9 and processor.use_global_token
        inputs = processor(images=PIL.Image.new("RGB", (20, 12), (255, 0, 0)), text="<image> what is it")
        expected = torch.load("expected.pt")
        for name in expected:
            torch.testing.assert_close(inputs[name], expected[name])
        assert not any(name == "delta_llava" or name.startswith("delta_llava.") for name in sys.modules)
        print("PROCESSOR-OK")
        """,
        cwd=str(tmp_path),
    )
    assert "PROCESSOR-OK" in result.stdout


# ---- bad input -------------------------------------------------------------------------------------------------


def test_flat_image_count_mismatch_names_both_numbers_and_the_fix():
    message = r"Got 1 image\(s\) but the text has 2 <image> placeholder\(s\) \(per sample: \[1, 1\]\)\. Write one"
    with pytest.raises(ValueError, match=message):
        make_processor()(images=[image()], text=["<image> a", "<image> red"])
    with pytest.raises(ValueError, match=r"Got 2 image\(s\) but the text has 0 <image>"):
        make_processor()(images=[image(), image()], text="describe it")


def test_per_sample_image_count_mismatch_names_the_sample():
    with pytest.raises(ValueError, match=r"sample 1: 2 <image> in the text but 1 image\(s\)\)\. Write one <image>"):
        make_processor()(images=[[image()], [image()]], text=["<image> a", "<image> and <image>"])
    with pytest.raises(ValueError, match="`images` has 3 per-sample lists but `text` has 2 samples"):
        make_processor()(images=[[image()], [image()], []], text=["<image> a", "<image>"])


def test_placeholders_without_images():
    with pytest.raises(ValueError, match=r"Got 0 image\(s\) but the text has 1 <image>"):
        make_processor()(text="<image> what is it")


def test_truncation_that_would_cut_image_tokens_is_refused():
    processor = make_processor()
    message = (
        r"Truncation would cut image tokens from sample 0: it needs 10 tokens \(8 of them for its 2 image\(s\)\) "
        r"but max_length=6 keeps only 4 image tokens\. Raise max_length to at least 10"
    )
    with pytest.raises(ValueError, match=message):
        processor(images=[image(), image()], text="<image> a <image>", truncation=True, max_length=6)


@pytest.mark.parametrize("budget", [0, -4, 5, 50, 2.5, True, "16"])
def test_invalid_budget_lists_valid_examples(budget):
    message = r"is not a valid budget: it must be a perfect square g\*g >= 1 .* e\.g\. 576, 144, 64, 36, 16, 4, 1"
    with pytest.raises(ValueError, match=message):
        make_processor()(images=image(), text="<image>", num_visual_tokens=budget)
    with pytest.raises(ValueError, match=message):
        make_processor(num_visual_tokens=budget)


@pytest.mark.parametrize("value", [-1, 1.5, "2", True])
def test_invalid_max_object_tokens(value):
    with pytest.raises(ValueError, match="must be an integer >= 0"):
        make_processor(use_object_tokens=True)(images=image(), text="<image>", max_object_tokens=value)


def test_object_mask_errors():
    with pytest.raises(ValueError, match="use_object_tokens=False, so the model would ignore them"):
        make_processor()(images=image(), text="<image>", object_masks=[mask_stack(1)])
    processor = make_processor(use_object_tokens=True)
    with pytest.raises(ValueError, match=r"Got 1 mask stack\(s\) for 2 image\(s\)"):
        processor(images=[image(), image()], text="<image> <image>", object_masks=[mask_stack(1)])
    with pytest.raises(ValueError, match="`object_masks` were given without images"):
        processor(text="a", object_masks=[mask_stack(1)])
    with pytest.raises(ValueError, match=r"shape \(num_images, num_masks, H, W\)"):
        processor(images=image(), text="<image>", object_masks=torch.zeros(3, 8, 8))


def test_tokenizer_without_the_image_token():
    with pytest.raises(ValueError, match=r"The tokenizer has no token '<img>'\. Add it with `tokenizer\.add_tokens"):
        make_processor(image_token="<img>")


def test_bad_argument_types():
    processor = make_processor()
    with pytest.raises(TypeError, match="`text` must be a string or a list of strings"):
        processor(text=5)
    with pytest.raises(ValueError, match="empty list"):
        processor(text=[])
    with pytest.raises(TypeError, match="Cannot use an object of type int as an image. Pass a PIL image"):
        processor(images=5, text="<image>")
    with pytest.raises(TypeError, match="Cannot use an object of type dict as an image"):
        processor(images=[[image(), {"image": image()}]], text="<image> <image>")
    with pytest.raises(ValueError, match="Pass `text`"):
        processor()
    with pytest.raises(ValueError, match="reads images and text only; got videos"):
        processor(text="a", videos=[np.zeros((2, 4, 4, 3))])


def test_unreadable_images_surface_through_the_processor(tmp_path):
    processor = make_processor()
    with pytest.raises(FileNotFoundError, match="missing.png"):
        processor(images=str(tmp_path / "missing.png"), text="<image>")
    with pytest.raises(ValueError, match="empty"):
        processor(images=np.zeros((0, 4, 3), np.uint8), text="<image>")
    with pytest.raises(ValueError, match="URLs are not fetched"):
        processor(images="https://example.com/a.jpg", text="<image>")


def test_pad_to_square_pads_images_and_masks_alike(tmp_path):
    """LLaVA-1.5's `pad` aspect ratio: a wide image keeps its whole width, centred on the mean colour."""
    wide = image(color=(255, 0, 0), size=(32, 16))
    masks = [np.ones((1, 16, 32), dtype=bool)]
    padded = make_processor(pad_to_square=True, use_object_tokens=True)
    cropped = make_processor(use_object_tokens=True)
    with_padding = padded(images=[wide], text="<image>", object_masks=masks)
    without = cropped(images=[wide], text="<image>", object_masks=masks)
    mean = torch.tensor(padded.image_processor.image_mean)
    std = torch.tensor(padded.image_processor.image_std)
    mean_colour = (torch.tensor(padded.padding_colour) / 255 - mean) / std
    torch.testing.assert_close(with_padding["pixel_values"][0, :, 0, 0], mean_colour, atol=1e-3, rtol=0)  # top margin
    red = (torch.tensor([1.0, 0.0, 0.0]) - mean) / std
    torch.testing.assert_close(with_padding["pixel_values"][0, :, SIDE // 2, 0], red, atol=1e-3, rtol=0)  # left edge kept
    torch.testing.assert_close(without["pixel_values"][0, :, 0, 0], red, atol=1e-3, rtol=0)  # cropped: no margin
    size = padded.mask_size
    assert with_padding["object_masks"][0, 0, 0].max() == 0 and with_padding["object_masks"][0, 0, size // 2].min() == 1
    assert without["object_masks"][0, 0, 0].min() == 1
    padded.save_pretrained(tmp_path)
    assert DeltaLlavaProcessor.from_pretrained(tmp_path).pad_to_square is True


def test_an_empty_video_list_is_the_same_as_none():
    processor = make_processor()
    with_empty = processor(images=[image()], text="<image> what", videos=[])
    plain = processor(images=[image()], text="<image> what")
    assert with_empty.keys() == plain.keys() and with_empty["visual_token_budget"] == plain["visual_token_budget"] == 4
    assert all(torch.equal(with_empty[key], plain[key]) for key in ("input_ids", "attention_mask", "pixel_values"))
    with pytest.raises(ValueError, match="reads images and text only; got videos"):
        processor(images=[image()], text="<image> what", videos=[np.zeros((2, 8, 8, 3))])


def test_serving_engines_get_the_image_token_count_per_image():
    processor = make_processor(num_visual_tokens=9, use_global_token=True)
    data = processor._get_num_multimodal_tokens(image_sizes=[(20, 12), (336, 336)])
    assert data.num_image_tokens == [10, 10] and data.num_image_patches == [1, 1]
    assert processor._get_num_multimodal_tokens(image_sizes=[(20, 12)], num_visual_tokens=1).num_image_tokens == [2]
    written = processor(images=[image()], text="<image>", num_visual_tokens=1)
    assert image_counts(written) == [2]  # what the hook reports is what the processor writes
    with pytest.raises(ValueError, match="num_visual_tokens=10 is not a valid budget"):
        processor._get_num_multimodal_tokens(image_sizes=[(20, 12)], num_visual_tokens=10)
    assert "num_image_tokens" not in processor._get_num_multimodal_tokens()


def test_a_processor_that_knows_the_models_budgets_refuses_the_others():
    processor = DeltaLlavaProcessor(
        CLIPImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE}),
        tokenizer(),
        num_visual_tokens=16,
        allowed_visual_token_counts=[576, 144, 64, 36, 16, 9, 4, 1],
    )
    image = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)
    assert processor(images=[image], text="<image> hi", num_visual_tokens=9)["visual_token_budget"].tolist() == [9]
    with pytest.raises(ValueError, match=r"num_visual_tokens=25 is not a budget this model can project to\. Allowed values: \[576"):
        processor(images=[image], text="<image> hi", num_visual_tokens=25)
    with pytest.raises(ValueError, match="Allowed values"):
        processor._get_num_multimodal_tokens(image_sizes=[(SIDE, SIDE)], num_visual_tokens=25)


def test_serving_engines_cannot_count_object_tokens_so_masks_there_are_refused():
    processor = DeltaLlavaProcessor(
        CLIPImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE}),
        tokenizer(),
        num_visual_tokens=4,
        use_object_tokens=True,
    )
    assert processor._get_num_multimodal_tokens(image_sizes=[(SIDE, SIDE)])["num_image_tokens"] == [4]
    with pytest.raises(ValueError, match="Object tokens are not counted for serving engines"):
        processor._get_num_multimodal_tokens(image_sizes=[(SIDE, SIDE)], object_masks=np.ones((1, 2, SIDE, SIDE)))
