"""Mask-LLaVA object tokens in the model: pooling, norm scaling, the k-first reduction, and the off switch."""

import pytest
import torch

from conftest import TINY_IMAGE_TOKEN_ID, tiny_config
from delta_llava import DeltaLlavaForConditionalGeneration
from delta_llava.object_tokens import count_object_masks, pool_mask_features, scale_to_norm


def test_pooling_equals_a_hand_computed_average():
    features = torch.arange(16 * 2, dtype=torch.float32).view(1, 16, 2)  # a 4x4 grid, 2 channels
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, :4, :4] = 1  # the top-left 2x2 patches: grid positions 0, 1, 4, 5
    pooled = pool_mask_features(features, mask)
    expected = features[0, [0, 1, 4, 5]].mean(dim=0)
    torch.testing.assert_close(pooled[0, 0], expected)


def test_partial_coverage_weighs_patches_by_area():
    features = torch.tensor([[[1.0], [3.0], [5.0], [7.0]]])  # 2x2 grid
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 0, :] = 1  # the top row of pixels: half of patches 0 and 1
    torch.testing.assert_close(pool_mask_features(features, mask)[0, 0], torch.tensor([2.0]))


def test_scaling_sets_the_norm_and_keeps_the_direction():
    tokens = torch.tensor([[[3.0, 4.0], [0.0, 0.5]]])
    scaled = scale_to_norm(tokens, torch.tensor([10.0]))
    torch.testing.assert_close(scaled.norm(dim=-1), torch.tensor([[10.0, 10.0]]))
    torch.testing.assert_close(scaled[0, 0], torch.tensor([6.0, 8.0]))


def test_counting_refuses_masks_after_padding():
    masks = torch.zeros(2, 3, 4, 4)
    masks[0, :2] = 1
    masks[1, 0] = 1
    assert count_object_masks(masks).tolist() == [2, 1]
    masks[1, 2] = 1
    with pytest.raises(ValueError, match="valid masks first and zero padding after them"):
        count_object_masks(masks)


def object_masks(num_images=2, valid=(3, 2), size=24):
    torch.manual_seed(3)
    masks = torch.zeros(num_images, max(valid), size, size)
    for image, count in enumerate(valid):
        for k in range(count):
            y, x = torch.randint(0, size - 6, (2,)).tolist()
            masks[image, k, y : y + 6, x : x + 6] = 1
    return masks


def object_model(**overrides):
    torch.manual_seed(0)
    return DeltaLlavaForConditionalGeneration(
        tiny_config(use_object_tokens=True, use_global_token=True, max_object_tokens=8, **overrides)
    ).eval()


def test_token_counts_per_image_follow_the_masks():
    model = object_model()
    with torch.no_grad():
        features = model.get_image_features(torch.randn(2, 3, 48, 48), object_masks=object_masks()).pooler_output
    assert [f.shape[0] for f in features] == [1 + 16 + 3, 1 + 16 + 2]


def test_dropping_object_tokens_keeps_every_other_value():
    model = object_model()
    pixels, masks = torch.randn(2, 3, 48, 48), object_masks()
    with torch.no_grad():
        everything = model.get_image_features(pixels, object_masks=masks).pooler_output
        first_one = model.get_image_features(pixels, object_masks=masks, max_object_tokens=1).pooler_output
        none = model.get_image_features(pixels, object_masks=masks, max_object_tokens=0).pooler_output
    for full, kept, dropped in zip(everything, first_one, none):
        assert kept.shape[0] == 1 + 16 + 1 and dropped.shape[0] == 1 + 16
        torch.testing.assert_close(kept, full[: 1 + 16 + 1])
        torch.testing.assert_close(dropped, full[: 1 + 16])


def test_object_tokens_enter_the_language_model():
    model = object_model()
    pixels, masks = torch.randn(1, 3, 48, 48), object_masks(1, (2,))
    input_ids = torch.tensor([[1, 5] + [TINY_IMAGE_TOKEN_ID] * (1 + 16 + 2) + [7]])
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=pixels, object_masks=masks).logits
        shifted = model(input_ids=input_ids, pixel_values=pixels, object_masks=masks.roll(3, dims=-1)).logits
    assert logits.shape[1] == input_ids.shape[1]
    assert not torch.allclose(logits[:, -1], shifted[:, -1])


def test_a_config_without_object_tokens_is_unchanged():
    torch.manual_seed(0)
    plain = DeltaLlavaForConditionalGeneration(tiny_config()).eval()
    names = set(plain.state_dict())
    assert not any("object" in n or "global" in n for n in names)
    with_objects = object_model()
    assert names < set(with_objects.state_dict())
    with_objects.load_state_dict(plain.state_dict(), strict=False)
    pixels, masks = torch.randn(2, 3, 48, 48), object_masks()
    with torch.no_grad():
        reference = plain.get_image_features(pixels).pooler_output
        ignored = plain.get_image_features(pixels, object_masks=masks).pooler_output
        switched_off = with_objects.get_image_features(pixels, object_masks=masks, max_object_tokens=0).pooler_output
    for a, b, c in zip(reference, ignored, switched_off):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c[1:])  # the same visual tokens after the global token


def test_mask_count_must_match_the_images():
    model = object_model()
    with pytest.raises(ValueError, match="object_masks has masks for 1 images but pixel_values has 2 images"):
        model.get_image_features(torch.randn(2, 3, 48, 48), object_masks=object_masks(1, (2,)))
