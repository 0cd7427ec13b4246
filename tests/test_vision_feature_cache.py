"""The frozen tower's memoised hidden states: same values as running it, the tower runs once per new image."""

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from delta_llava.training.vision_feature_cache import cached_vision_tower, image_key


@pytest.fixture
def tower():
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=4
    )
    model = CLIPVisionModel(config).eval()
    model.requires_grad_(False)
    return model


def test_cached_states_equal_the_towers_and_each_image_runs_once(tower):
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        expected = tower(images, output_hidden_states=True).hidden_states
    calls = []
    tower.get_input_embeddings().register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    with cached_vision_tower(tower, [-2, -1]) as store:
        first = tower(images[:3], output_hidden_states=True).hidden_states
        again = tower(images[[3, 1, 0]], output_hidden_states=True).hidden_states
    assert calls == [3, 1] and len(store) == 4  # the second batch ran the tower on its one new image only
    assert first[0] is None and again[0] is None  # only the kept layers are stored
    for layer in (1, 2):
        torch.testing.assert_close(first[layer], expected[layer][:3])
        torch.testing.assert_close(again[layer], expected[layer][[3, 1, 0]])
    assert "forward" not in vars(tower)  # the class's forward is back after the block


def test_a_store_carries_the_states_on_to_a_later_block(tower):
    images = torch.randn(3, 3, 16, 16)
    calls = []
    tower.get_input_embeddings().register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    with cached_vision_tower(tower, [-1]) as store:
        first = tower(images[:2], output_hidden_states=True).hidden_states
    with cached_vision_tower(tower, [-1], store):  # e.g. a second training phase over the same frozen tower
        again = tower(images, output_hidden_states=True).hidden_states
    with cached_vision_tower(tower, [1, -1], store):  # a layer the store lacks: the tower runs again
        other = tower(images[:1], output_hidden_states=True).hidden_states
    assert calls == [2, 1, 1] and len(store) == 3
    assert torch.equal(again[-1][:2], first[-1])
    torch.testing.assert_close(other[1], tower(images[:1], output_hidden_states=True).hidden_states[1])


def test_keys_tell_images_apart_by_content_alone():
    image = torch.rand(3, 16, 16)
    changed = image.clone()
    changed[0, 5, 7] += 1e-6
    assert image_key(image) == image_key(image.clone()) != image_key(changed)
    assert image_key(image) == image_key(image.permute(1, 2, 0).contiguous().permute(2, 0, 1))  # layout is not content


def test_a_tower_that_still_trains_is_refused(tower):
    tower.post_layernorm.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen tower"), cached_vision_tower(tower, [-1]):
        pass
