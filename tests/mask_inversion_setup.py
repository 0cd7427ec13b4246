"""A tiny CLIP tower with its projection and a small dataset with stored object masks, for MaskInversion tests."""

import numpy as np
import PIL.Image
import torch
from datasets import Dataset, Features, Image, List
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from delta_llava.processing.object_mask_inputs import compact_mask_stack
from delta_llava.processing.precompute_object_masks import object_masks_feature

SIDE, MASK_SIZE, EMBEDDING_WIDTH = 32, 8, 16


def tiny_clip(image_size: int = SIDE) -> CLIPVisionModelWithProjection:
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
        patch_size=8, projection_dim=EMBEDDING_WIDTH,
    )  # fmt: skip
    return CLIPVisionModelWithProjection(config).eval()


def clip_image_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE})


def masks_dataset(mask_counts: list[int]) -> Dataset:
    """One random image per row, with `mask_counts[row]` stored rectangle masks (compact uint8, as precomputed)."""
    rng = np.random.default_rng(0)
    images, stacks = [], []
    for count in mask_counts:
        images.append([PIL.Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))])
        masks = torch.zeros(count, SIDE, SIDE, dtype=torch.bool)
        for index in range(count):
            masks[index, 4 * index : 4 * index + 12, 2:20] = True
        stacks.append([compact_mask_stack(masks, MASK_SIZE)])
    features = Features({"images": List(Image()), "object_masks": object_masks_feature(MASK_SIZE)})
    return Dataset.from_dict({"images": images, "object_masks": stacks}, features=features)
