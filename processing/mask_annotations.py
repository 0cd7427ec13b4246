"""Object masks from annotations: COCO polygons, COCO run-length encodings (RLE), or arrays given directly.

``masks_from_annotations`` builds the same ``(K + 1, H, W)`` stack as the DETR+SAM extractor (objects by score,
else by area, then the background mask), so annotated data can skip detection entirely.

This file needs only ``numpy``, ``PIL`` and ``torch``.
"""

from collections.abc import Sequence
from numbers import Real

import numpy as np
import torch
from PIL import Image, ImageDraw

from .object_mask_inputs import append_background_mask

Segmentation = list | dict | np.ndarray | torch.Tensor

__all__ = ["masks_from_annotations", "polygons_to_mask", "rle_to_mask", "segmentation_to_mask"]


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise a COCO polygon segmentation (the union of its parts).

    A pixel belongs to the mask when its centre lies inside a part or on its outline (to within a quarter
    pixel), so the square ``[0, 0, 4, 0, 4, 4, 0, 4]`` covers exactly 4 x 4 pixels.

    Args:
        polygons: list of parts, each a flat list ``[x1, y1, x2, y2, ...]`` in pixels, at least 3 points.
        height, width: image size.

    Returns:
        bool array ``(height, width)``.
    """
    _check_image_size(height, width)
    parts = _checked_polygon_parts(polygons)
    # Draw at twice the resolution, shifted so that pixel centres land on even sub-pixels: PIL fills the outline
    # inclusively and rounds vertices, and sampling the even sub-pixels reads one value per pixel centre.
    canvas = Image.new("L", (2 * width, 2 * height), 0)
    draw = ImageDraw.Draw(canvas)
    for part in parts:
        draw.polygon([2 * value - 1 for value in part], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)[::2, ::2].copy()


def rle_to_mask(rle: dict) -> np.ndarray:
    """Decode a COCO run-length encoding.

    Args:
        rle: ``{"size": [height, width], "counts": ...}`` where ``counts`` is either the uncompressed list of run
            lengths (alternating background/foreground, starting with background) or COCO's compressed string
            (``str`` or ``bytes``). Runs go down the columns (column-major), as in COCO.

    Returns:
        bool array ``(height, width)``.
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(
            "An RLE segmentation must be a dict with 'size' ([height, width]) and 'counts'; got "
            f"{_describe(rle)}. Pass the annotation's 'segmentation' field as it appears in the COCO JSON."
        )
    size = rle["size"]
    if not isinstance(size, Sequence) or len(size) != 2 or not all(_is_int(value) and value > 0 for value in size):
        raise ValueError(f"RLE 'size' must be [height, width] with positive integers, got {size!r}.")
    height, width = int(size[0]), int(size[1])
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if isinstance(counts, str):
        counts = _decode_compressed_counts(counts)
    elif isinstance(counts, (list, tuple, np.ndarray)):
        if not all(_is_int(count) and count >= 0 for count in counts):
            raise ValueError("Uncompressed RLE 'counts' must be non-negative integers (run lengths).")
        counts = [int(count) for count in counts]
    else:
        raise ValueError(
            f"RLE 'counts' must be a list of run lengths or a compressed COCO string, got {type(counts).__name__}."
        )
    if sum(counts) != height * width:
        raise ValueError(
            f"RLE size mismatch: the runs cover {sum(counts)} pixels but 'size' {height}x{width} has "
            f"{height * width}. Check that 'size' is [height, width] of the image this RLE was encoded from."
        )
    is_foreground = np.arange(len(counts)) % 2 == 1
    return np.repeat(is_foreground, counts).reshape((height, width), order="F")


def segmentation_to_mask(segmentation: Segmentation, height: int, width: int) -> np.ndarray:
    """One object's mask from a COCO polygon list, a COCO RLE dict, or a 2-D array/tensor of 0/1 values.

    Returns:
        bool array ``(height, width)``.
    """
    _check_image_size(height, width)
    if isinstance(segmentation, dict):
        if "segmentation" in segmentation:
            raise ValueError(
                "Got a whole COCO annotation dict; pass its 'segmentation' field instead (and its 'area' or "
                "'score' as `areas`/`scores`)."
            )
        mask = rle_to_mask(segmentation)
        if mask.shape != (height, width):
            raise ValueError(
                f"RLE size mismatch: the RLE is {list(mask.shape)} ([height, width]) but the image is "
                f"[{height}, {width}]. Use the RLE of this image, or pass this image's height and width."
            )
        return mask
    if isinstance(segmentation, (np.ndarray, torch.Tensor)):
        return _checked_array_mask(segmentation, height, width)
    if isinstance(segmentation, (list, tuple)):
        return polygons_to_mask(segmentation, height, width)
    raise TypeError(
        f"Unsupported segmentation type {type(segmentation).__name__}: use a COCO polygon list, a COCO RLE dict "
        "or a 2-D numpy array / torch tensor of 0/1 values."
    )


def masks_from_annotations(
    segmentations: Sequence[Segmentation],
    height: int,
    width: int,
    scores: Sequence[float] | None = None,
    areas: Sequence[float] | None = None,
) -> torch.Tensor:
    """Build an image's mask stack from its annotations.

    Objects are ordered by ``scores`` (descending) when given, else by ``areas`` (descending) when given, else
    by their pixel count (descending); ties keep the input order. Objects whose mask has no pixel are dropped.

    Args:
        segmentations: one segmentation per object (see ``segmentation_to_mask``).
        height, width: image size.
        scores: optional detection scores, one per segmentation.
        areas: optional areas (e.g. COCO's ``area`` field), one per segmentation.

    Returns:
        bool tensor ``(K + 1, height, width)``: objects, then the background mask.
    """
    _check_image_size(height, width)
    if isinstance(segmentations, (dict, np.ndarray, torch.Tensor)):
        raise TypeError(
            f"`segmentations` must be a list with one segmentation per object, got {type(segmentations).__name__}. "
            "Wrap a single object's segmentation in a list."
        )
    masks = [segmentation_to_mask(segmentation, height, width) for segmentation in segmentations]
    if scores is not None:
        sort_keys = _checked_per_object(scores, "scores", len(masks))
    elif areas is not None:
        sort_keys = _checked_per_object(areas, "areas", len(masks))
    else:
        sort_keys = np.array([mask.sum() for mask in masks], dtype=np.float64)
    order = np.argsort(-sort_keys, kind="stable")
    kept = [torch.from_numpy(masks[index]) for index in order if masks[index].any()]
    object_masks = torch.stack(kept) if kept else torch.zeros(0, height, width, dtype=torch.bool)
    return append_background_mask(object_masks)


def _decode_compressed_counts(text: str) -> list[int]:
    """Decode COCO's compressed RLE string into run lengths.

    Each run is written as little-endian groups of 5 bits, one character per group (character code - 48); bit
    0x20 of a group says another group follows, and bit 0x10 of the last group is the sign. From the fourth run
    on, the stored value is the difference to the run two places earlier.
    """
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position == len(text):
                raise ValueError(
                    "Compressed RLE 'counts' string ends in the middle of a number; it was truncated. Use the "
                    "complete string from the annotation file."
                )
            group = ord(text[position]) - 48
            if not 0 <= group < 64:
                raise ValueError(
                    f"Compressed RLE 'counts' has character {text[position]!r} at position {position}, which no "
                    "COCO encoder writes. Pass the string exactly as stored in the annotation file."
                )
            value |= (group & 0x1F) << shift
            shift += 5
            more = bool(group & 0x20)
            position += 1
            if not more and group & 0x10:
                value -= 1 << shift
        if len(counts) > 2:
            value += counts[-2]
        if value < 0:
            raise ValueError(f"Compressed RLE 'counts' decodes to a negative run ({value}); the string is corrupt.")
        counts.append(value)
    return counts


def _checked_polygon_parts(polygons: Sequence[Sequence[float]]) -> list[list[float]]:
    if not isinstance(polygons, (list, tuple)) or len(polygons) == 0:
        raise ValueError(
            "Empty polygon segmentation: a COCO polygon needs at least one part [x1, y1, x2, y2, x3, y3, ...]. "
            "Drop annotations without a segmentation, or give their mask as an array."
        )
    if isinstance(polygons[0], Real):
        raise ValueError(
            "Polygon segmentation is a flat list of numbers; COCO stores a list of parts. Wrap it: [[x1, y1, ...]]."
        )
    parts = []
    for index, part in enumerate(polygons):
        if not isinstance(part, (list, tuple, np.ndarray)) or not all(isinstance(value, Real) for value in part):
            raise ValueError(f"Polygon part {index} must be a flat list of numbers [x1, y1, x2, y2, ...].")
        if len(part) < 6 or len(part) % 2:
            raise ValueError(
                f"Polygon part {index} has {len(part)} numbers; a polygon needs an even count of at least 6 "
                "(3 points as x, y pairs). Drop degenerate parts before building masks."
            )
        if not np.isfinite(part).all():
            raise ValueError(f"Polygon part {index} contains NaN or infinite coordinates; fix or drop it.")
        parts.append([float(value) for value in part])
    return parts


def _checked_array_mask(mask: np.ndarray | torch.Tensor, height: int, width: int) -> np.ndarray:
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else mask
    if array.shape != (height, width):
        raise ValueError(
            f"Mask array has shape {array.shape} but the image is ({height}, {width}); give one 2-D "
            "(height, width) mask per object at the image size."
        )
    if array.dtype == bool:
        return array
    if not np.isin(array, (0, 1)).all():
        raise ValueError(
            "Mask array contains values other than 0 and 1; binarise soft masks first, e.g. `mask > 0.5`."
        )
    return array.astype(bool)


def _checked_per_object(values: Sequence[float], name: str, num_objects: int) -> np.ndarray:
    keys = np.asarray(values, dtype=np.float64)
    if keys.shape != (num_objects,):
        raise ValueError(f"`{name}` must hold one number per segmentation ({num_objects}), got shape {keys.shape}.")
    if not np.isfinite(keys).all():
        raise ValueError(f"`{name}` contains NaN or infinite values; they cannot order the objects.")
    return keys


def _check_image_size(height: int, width: int) -> None:
    if not (_is_int(height) and _is_int(width) and height > 0 and width > 0):
        raise ValueError(f"Image height and width must be positive integers, got height={height!r}, width={width!r}.")


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _describe(value: object) -> str:
    return f"keys {sorted(value)}" if isinstance(value, dict) else type(value).__name__
