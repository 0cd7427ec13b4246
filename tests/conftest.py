"""Tiny configs shared by the tests: a 24x24 patch grid (so every paper budget 576 ... 1 exists) at small widths."""

import pytest
import torch

from delta_llava import DeltaLlavaConfig
from delta_llava.configuration_delta_llava import DELTA_LAYOUTS as CONFIG_DELTA_LAYOUTS

TINY_VOCAB_SIZE = 96
TINY_IMAGE_TOKEN_ID = 95


def tiny_vision_config(**overrides) -> dict:
    config = {
        "model_type": "clip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "image_size": 48,
        "patch_size": 2,
    }
    config.update(overrides)
    return config


def tiny_text_config(**overrides) -> dict:
    config = {
        "model_type": "llama",
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": TINY_VOCAB_SIZE,
        "max_position_embeddings": 2048,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    config.update(overrides)
    return config


# Widths of each delta layout at the tiny vision width 32 (the official Next-ViT block splits it 24 + 8).
TINY_LAYOUT_SIZES = {"official": {"ntb_head_dim": 8}, "shared_base": {"ffn_hidden_size": 64}}
DELTA_LAYOUTS = list(CONFIG_DELTA_LAYOUTS)


def tiny_projector_sizes(projector_type: str = "delta", delta_layout: str = "official") -> dict:
    """The projector widths of the tiny configs; layout-only sizes are set for the `delta` projector only."""
    sizes = {"projector_hidden_size": 32, "projector_head_dim": 16, "delta_rank": 4}
    if projector_type == "delta":
        sizes.update(TINY_LAYOUT_SIZES.get(delta_layout, {}))
    return sizes


def tiny_config(**overrides) -> DeltaLlavaConfig:
    """A DeltaLlavaConfig small enough for CPU unit tests; keyword arguments override projector fields."""
    settings = {
        "vision_config": tiny_vision_config(),
        "text_config": tiny_text_config(),
        "image_token_id": TINY_IMAGE_TOKEN_ID,
        "num_visual_tokens": 16,
        **tiny_projector_sizes(overrides.get("projector_type", "delta"), overrides.get("delta_layout", "official")),
    }
    settings.update(overrides)
    return DeltaLlavaConfig(**settings)


@pytest.fixture
def seeded():
    torch.manual_seed(0)
