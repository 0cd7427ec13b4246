"""Mask-LLaVA object tokens: mask-weighted pooling of patch features, norm scaling, and the k-first reduction."""

import math

import torch
import torch.nn.functional as F


def count_object_masks(object_masks: torch.Tensor) -> torch.Tensor:
    """
    object_masks (I, K, H, W) or their embeddings (I, K, E), valid objects first (ordered by detector score,
    background last), then all-zero padding -> (I,) number of valid objects per image. A valid object after a
    padding one is refused: it would be misaligned.
    """
    valid = object_masks.flatten(2).abs().amax(dim=-1) > 0
    counts = valid.sum(dim=-1)
    leading = torch.arange(valid.shape[1], device=valid.device) < counts[:, None]
    if not torch.equal(valid, leading):
        raise ValueError(
            "object_masks must hold the valid masks first and zero padding after them, per image; found a non-empty "
            "mask after an empty one. Build them with the processor (or `masks_to_model_input`)."
        )
    return counts


def pool_mask_features(patch_features: torch.Tensor, object_masks: torch.Tensor) -> torch.Tensor:
    """
    Mask-weighted average of patch features: patch_features (I, G*G, C), object_masks (I, K, H, W) -> (I, K, C).
    Each mask is area-resampled to the G x G patch grid, so a mask covering part of a patch weighs it by that part.
    """
    grid = math.isqrt(patch_features.shape[1])
    weights = F.adaptive_avg_pool2d(object_masks.to(patch_features.dtype), grid).flatten(2)  # (I, K, G*G)
    totals = weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    return torch.bmm(weights, patch_features) / totals


def scale_to_norm(tokens: torch.Tensor, target_norm: torch.Tensor) -> torch.Tensor:
    """Rescale every token (I, K, C) to the per-image L2 norm `target_norm` (I,), keeping its direction."""
    norms = tokens.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(tokens.dtype).eps)
    return tokens * (target_norm[:, None, None] / norms)
