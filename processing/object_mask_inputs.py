"""The layout of object masks, from one image's mask stack to the model's ``object_masks`` input.

Convention, shared by every producer (the DETR+SAM extractor, COCO annotations, masks passed in directly) and
by the model:

* One image has a **mask stack** of shape ``(K + 1, H, W)``: ``K`` object masks ordered by detector score
  (highest first; by area when there is no score), then exactly one **background** mask, the complement of the
  union of the object masks. Keeping the first ``k`` masks is therefore the test-time token reduction.
* A stack is stored compactly (e.g. in a ``datasets`` column) as ``uint8`` of shape ``(K + 1, S, S)``: each
  value is the fraction of the cell covered by the mask, times 255, rounded **up**, so a mask that is not empty
  at full size never becomes empty when shrunk. ``datasets`` gives the column back as Python ints, so every
  integer stack is read as this form; binary masks travel as ``bool``.
* The model input for a batch is a float tensor ``(num_images, K_max, S, S)`` in ``[0, 1]``: each image's
  valid masks first, then all-zero padding. The number of valid masks of an image is the number of leading
  non-empty masks (``count_valid_masks``). An empty background (objects cover the whole image) therefore just
  ends the valid masks one early.

This file needs only ``torch`` and ``numpy``; it travels with a checkpoint as remote code.
"""

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

MaskStack = torch.Tensor | np.ndarray | Sequence

__all__ = [
    "append_background_mask",
    "check_mask_size",
    "compact_mask_stack",
    "count_valid_masks",
    "masks_to_model_input",
]


def append_background_mask(object_masks: torch.Tensor) -> torch.Tensor:
    """Append the background mask (complement of the union of the objects) to a stack of object masks.

    Args:
        object_masks: bool tensor ``(K, H, W)``, objects already in their final order. ``K`` may be 0.

    Returns:
        bool tensor ``(K + 1, H, W)``; the last mask is the background (all ones when ``K == 0``).
    """
    if object_masks.ndim != 3:
        raise ValueError(
            f"Object masks must have shape (num_objects, height, width), got {tuple(object_masks.shape)}. "
            "Stack one 2-D mask per object along a new first dimension."
        )
    object_masks = object_masks.bool()
    background = ~object_masks.any(dim=0, keepdim=True)
    return torch.cat([object_masks, background], dim=0)


def compact_mask_stack(masks: torch.Tensor, mask_size: int) -> np.ndarray:
    """Shrink a full-size mask stack to the compact stored form.

    Args:
        masks: bool tensor ``(M, H, W)`` (any device).
        mask_size: side ``S`` of the stored square grid.

    Returns:
        uint8 array ``(M, S, S)``: covered fraction of each cell times 255, rounded up (so non-empty stays
        non-empty).
    """
    check_mask_size(mask_size)
    if masks.ndim != 3:
        raise ValueError(
            f"A mask stack must have shape (num_masks, height, width), got {tuple(masks.shape)}. "
            "Pass one image's stack, not a batch."
        )
    coverage = _resize_coverage(masks.float(), mask_size)
    return torch.ceil(coverage * 255).clamp_(0, 255).to(torch.uint8).cpu().numpy()


def pad_coverage_to_square(coverage: torch.Tensor) -> torch.Tensor:
    """(M, H, W) -> (M, side, side), side = max(H, W): zero margins placed as `image_inputs.pad_to_square` places
    the image, so padded masks stay aligned with padded images."""
    height, width = coverage.shape[-2:]
    side = max(height, width)
    left, top = (side - width) // 2, (side - height) // 2
    return torch.nn.functional.pad(coverage, (left, side - width - left, top, side - height - top))


def masks_to_model_input(
    mask_stacks: Sequence[MaskStack], mask_size: int, pad_to_square: bool = False
) -> torch.Tensor:
    """Turn one mask stack per image into the model's zero-padded ``object_masks`` input.

    Args:
        mask_stacks: one stack per image, each of shape ``(M_i, H_i, W_i)`` as a tensor, numpy array or nested
            list. ``bool`` stacks are binary masks; ``uint8`` stacks are the compact stored form (values
            0..255 = covered fraction); so are other integer stacks, since ``datasets`` hands the stored column back
            as Python ints (pass binary 0/1 masks as bool). Float stacks must lie in ``[0, 1]``. Sizes may
            differ per image.
        mask_size: side ``S`` of the square grid the model reads.
        pad_to_square: pad each stack to a square first, as the processor pads images with `pad_to_square`.

    Returns:
        float32 tensor ``(num_images, K_max, S, S)`` in ``[0, 1]`` with ``K_max = max M_i``: each image's masks
        first, then all-zero padding masks.
    """
    check_mask_size(mask_size)
    if isinstance(mask_stacks, (torch.Tensor, np.ndarray)) or len(mask_stacks) == 0:
        raise ValueError(
            "`mask_stacks` must be a non-empty list with one mask stack (num_masks, height, width) per image. "
            "Wrap a single image's stack in a list."
        )
    coverages = [_to_coverage(stack, image_index) for image_index, stack in enumerate(mask_stacks)]
    if pad_to_square:
        coverages = [pad_coverage_to_square(coverage) for coverage in coverages]
    resized = [_resize_coverage(coverage, mask_size) for coverage in coverages]
    max_masks = max(masks.shape[0] for masks in resized)
    model_input = torch.zeros(len(resized), max_masks, mask_size, mask_size, dtype=torch.float32)
    for image_index, masks in enumerate(resized):
        _check_valid_masks_lead(masks, image_index)
        model_input[image_index, : masks.shape[0]] = masks
    return model_input


def count_valid_masks(object_masks: torch.Tensor) -> torch.Tensor:
    """Number of leading non-empty masks per image.

    Args:
        object_masks: tensor ``(num_images, K_max, S, S)`` (or ``(num_images, K_max, H, W)``).

    Returns:
        int64 tensor ``(num_images,)``.
    """
    if object_masks.ndim != 4:
        raise ValueError(
            f"`object_masks` must have shape (num_images, num_masks, height, width), got "
            f"{tuple(object_masks.shape)}. Build it with `masks_to_model_input`."
        )
    non_empty = object_masks.flatten(2).ne(0).any(dim=2)
    return non_empty.long().cumprod(dim=1).sum(dim=1)


def check_mask_size(mask_size: int) -> None:
    """Raise a ``ValueError`` unless ``mask_size`` is a positive integer."""
    if not isinstance(mask_size, int) or isinstance(mask_size, bool) or mask_size < 1:
        raise ValueError(f"`mask_size` must be a positive integer (e.g. 24 or 64), got {mask_size!r}.")


def _to_coverage(stack: MaskStack, image_index: int) -> torch.Tensor:
    """One stack as float32 ``(M, H, W)`` in ``[0, 1]`` on the CPU."""
    masks = stack if isinstance(stack, torch.Tensor) else torch.from_numpy(np.asarray(stack))
    if masks.ndim != 3:
        raise ValueError(
            f"Mask stack {image_index} has shape {tuple(masks.shape)}; expected (num_masks, height, width). "
            "Give every image its own 3-D stack (background mask included)."
        )
    masks = masks.detach().cpu()
    if masks.dtype == torch.bool:
        return masks.float()
    if not masks.is_floating_point():
        if masks.numel() and (masks.min() < 0 or masks.max() > 255):
            raise ValueError(
                f"Mask stack {image_index} has integer values outside 0..255; integer stacks are read as the "
                "compact stored form (covered fraction x 255). Pass binary masks as bool, e.g. `mask.astype(bool)`."
            )
        return masks.float() / 255
    masks = masks.float()
    if masks.numel() and (masks.min() < 0 or masks.max() > 1):
        raise ValueError(
            f"Mask stack {image_index} has float values outside [0, 1] (min {masks.min().item():g}, max "
            f"{masks.max().item():g}). Pass probabilities or binary masks, e.g. `torch.sigmoid(logits)`."
        )
    return masks


def _resize_coverage(masks: torch.Tensor, mask_size: int) -> torch.Tensor:
    """Area-average float masks ``(M, H, W)`` to ``(M, S, S)``; unchanged when already ``S x S``."""
    if masks.shape[0] == 0:
        return masks.new_zeros(0, mask_size, mask_size)
    if masks.shape[-2] == 0 or masks.shape[-1] == 0:
        raise ValueError(f"Masks of size {tuple(masks.shape[-2:])} have no pixels; give masks at the image size.")
    if masks.shape[-2:] == (mask_size, mask_size):
        return masks
    return F.interpolate(masks[None], size=(mask_size, mask_size), mode="area")[0]


def _check_valid_masks_lead(masks: torch.Tensor, image_index: int) -> None:
    """Refuse a stack where an empty mask precedes a non-empty one (it would hide the later masks)."""
    non_empty = masks.flatten(1).ne(0).any(dim=1)
    num_leading = int(non_empty.long().cumprod(dim=0).sum())
    if non_empty[num_leading:].any():
        raise ValueError(
            f"Mask stack {image_index}: mask {num_leading} is empty but a later mask is not. Valid masks must "
            "come first (objects by score, background last); drop empty object masks before building the stack."
        )
