"""Property: for any texts, placeholder counts, images and masks the processor either returns inputs whose image
tokens match what the model will produce per image, or raises a documented error (ValueError, FileNotFoundError)."""

import functools

import numpy as np
import PIL.Image
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import CLIPImageProcessor

from delta_llava.processing import DeltaLlavaProcessor
from delta_llava.training.local_tokenizer import build_word_level_tokenizer

WORDS = ["what", "is", "the", "red", "circle", "?", ",", "unknownword", "\n"]
VALID_BUDGETS = [1, 4, 9, 16]
INVALID_BUDGETS = [0, 2, 5, 10]
IMAGE_KINDS = ["pil_rgb", "pil_rgba", "pil_l", "pil_p", "pil_i16", "np_uint8", "np_float", "np_gray", "torch_chw"]


@functools.cache
def processor(use_global_token: bool, use_object_tokens: bool) -> DeltaLlavaProcessor:
    image_processor = CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})
    tokenizer = build_word_level_tokenizer(WORDS)
    return DeltaLlavaProcessor(
        image_processor, tokenizer, use_global_token=use_global_token, use_object_tokens=use_object_tokens, mask_size=4
    )


def make_image(kind: str, height: int, width: int):
    rng = np.random.default_rng(height * 100 + width)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if kind == "pil_rgb":
        return PIL.Image.fromarray(rgb)
    if kind == "pil_rgba":
        return PIL.Image.fromarray(np.concatenate([rgb, rgb[..., :1]], axis=2), mode="RGBA")
    if kind == "pil_l":
        return PIL.Image.fromarray(rgb[..., 0])
    if kind == "pil_p":
        return PIL.Image.fromarray(rgb).convert("P")
    if kind == "pil_i16":
        return PIL.Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    if kind == "np_uint8":
        return rgb
    if kind == "np_float":
        return rgb.astype(np.float32) / 255
    if kind == "np_gray":
        return rgb[..., 0]
    if kind == "torch_chw":
        return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    return "/nonexistent/delta-llava-test/image.png"


def mask_stack(num_valid: int, num_empty: int) -> np.ndarray:
    stack = np.zeros((num_valid + num_empty, 12, 12), bool)
    for index in range(num_valid):
        stack[index, index, :] = True
    return stack


@st.composite
def cases(draw):
    use_global_token, use_object_tokens = draw(st.booleans()), draw(st.booleans())
    budget = draw(st.sampled_from(VALID_BUDGETS * 3 + INVALID_BUDGETS))
    max_object_tokens = draw(st.integers(0, 4))
    segment = st.one_of(
        st.lists(st.sampled_from(WORDS), max_size=4).map(" ".join),
        st.text(st.characters(codec="utf-8", exclude_characters="<>"), max_size=6),
    )
    texts, images, masks, valid_counts = [], [], [], []
    for _ in range(draw(st.integers(1, 3))):
        num_placeholders = draw(st.integers(0, 3))
        parts = [draw(segment) for _ in range(num_placeholders + 1)]
        texts.append("<image>".join(parts))
        sample_images, sample_masks, sample_counts = [], [], []
        for _ in range(num_placeholders):
            kind = draw(st.sampled_from(IMAGE_KINDS * 2 + ["missing_file"]))
            sample_images.append(make_image(kind, draw(st.integers(1, 24)), draw(st.integers(1, 24))))
            num_valid, num_empty = draw(st.integers(0, 4)), draw(st.integers(0, 2))
            sample_masks.append(mask_stack(num_valid, num_empty))
            sample_counts.append(num_valid)
        images.append(sample_images)
        masks.append(sample_masks)
        valid_counts.append(sample_counts)
    count_error = draw(st.sampled_from(["none"] * 6 + ["extra", "missing"]))
    if count_error == "extra":
        images[-1].append(make_image("pil_rgb", 3, 3))
        masks[-1].append(mask_stack(1, 0))
    elif count_error == "missing" and any(images):
        sample = next(index for index, group in enumerate(images) if group)
        images[sample].pop()
        masks[sample].pop()
    elif count_error == "missing":
        count_error = "none"  # no image to drop
    return {
        "settings": (use_global_token, use_object_tokens),
        "nested": draw(st.booleans()),
        "with_masks": use_object_tokens and draw(st.booleans()),
        "budget": budget,
        "max_object_tokens": max_object_tokens,
        "max_length": draw(st.integers(1, 60)) if draw(st.sampled_from([False] * 3 + [True])) else None,
        "texts": texts,
        "images": images,
        "masks": masks,
        "valid_counts": valid_counts,
        "count_error": count_error != "none",
    }


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_placeholders_match_model_features_or_a_documented_error(case):
    use_global_token, use_object_tokens = case["settings"]
    flat_images = [image for group in case["images"] for image in group]
    flat_masks = [stack for group in case["masks"] for stack in group]
    arguments = {
        "text": case["texts"],
        "images": (case["images"] if case["nested"] else flat_images) or None,
        "num_visual_tokens": case["budget"],
        "max_object_tokens": case["max_object_tokens"],
    }
    if case["with_masks"] and flat_images:
        arguments["object_masks"] = case["masks"] if case["nested"] else flat_masks
    if case["max_length"] is not None:
        arguments.update(truncation=True, max_length=case["max_length"])

    missing_file = any(isinstance(image, str) for image in flat_images)
    must_succeed = (
        case["budget"] in VALID_BUDGETS and not case["count_error"] and not missing_file and case["max_length"] is None
    )
    try:
        inputs = processor(use_global_token, use_object_tokens)(**arguments)
    except (ValueError, FileNotFoundError) as error:
        assert not must_succeed, f"valid input refused: {error}"
        assert str(error)
        return

    per_image_extra = 1 if use_global_token else 0
    keep = case["max_object_tokens"] if "object_masks" in arguments else 0
    expected = [
        sum(per_image_extra + case["budget"] + min(count, keep) for count in sample_counts)
        for sample_counts in case["valid_counts"]
    ]
    image_token_id = processor(use_global_token, use_object_tokens).image_token_id
    assert (inputs["input_ids"] == image_token_id).sum(dim=1).tolist() == expected
    if flat_images:
        assert inputs["pixel_values"].shape == (len(flat_images), 3, 8, 8)
    if "object_masks" in arguments:
        assert inputs["object_masks"].shape[:1] == (len(flat_images),)
