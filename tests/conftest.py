"""Tiny configs shared by the tests: a 24x24 patch grid (so every paper budget 576 ... 1 exists) at small widths."""

import pytest
import torch

from delta_llava import DeltaLlavaConfig

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


def tiny_config(**overrides) -> DeltaLlavaConfig:
    """A DeltaLlavaConfig small enough for CPU unit tests; keyword arguments override projector fields."""
    settings = {
        "vision_config": tiny_vision_config(),
        "text_config": tiny_text_config(),
        "image_token_id": TINY_IMAGE_TOKEN_ID,
        "num_visual_tokens": 16,
        "projector_hidden_size": 32,
        "projector_head_dim": 16,
        "delta_rank": 4,
        "ffn_hidden_size": 64,
    }
    settings.update(overrides)
    return DeltaLlavaConfig(**settings)


@pytest.fixture
def seeded():
    torch.manual_seed(0)
