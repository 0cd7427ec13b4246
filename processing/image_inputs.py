"""Turn the images users pass (PIL images, arrays, tensors, file paths) into RGB PIL images.

This file travels with checkpoints as remote code: it imports only the standard library, numpy, PIL and torch.

Conversion rules:
- Transparent images (RGBA, LA, PA, P or L with a transparency key) are composited on a white background.
- 16-bit images (PIL modes ``I;16*``, numpy ``uint16``) are scaled by 255 / 65535, never clipped.
  PIL mode ``I`` and other integer arrays are read as 8-bit when every value is at most 255 and as 16-bit
  otherwise; negative values or values above 65535 are refused.
- Float images (PIL mode ``F``, float arrays and tensors) are read as [0, 1] when every value is at most 1 and
  as [0, 255] otherwise; negative, non-finite or larger values are refused (they usually mean the image was
  already normalized).
- Arrays are ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` with C in 1 (gray), 2 (gray + alpha), 3 (RGB) or
  4 (RGBA). When both layouts fit, the axis of 3 or 4 channels wins (a (3, H, 2) array is RGB, not gray + alpha);
  if that does not decide, numpy arrays are read channels-last and torch tensors channels-first.
- EXIF orientation is applied, so a photo rotated by the camera comes out upright.
"""

import os
import re
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch


ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | str | os.PathLike

_CHANNEL_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_HIGH_DEPTH_MODES = {"I", "F", "I;16", "I;16B", "I;16L", "I;16N"}
_URL_PATTERN = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://|^data:")


def to_rgb_image(image: ImageInput) -> PIL.Image.Image:
    """Convert one image to an upright RGB PIL image, following the rules in this module's docstring.

    Args:
        image: a PIL image, a numpy array or torch tensor of shape (H, W), (H, W, C) or (C, H, W), or the path of
            an image file.

    Returns:
        A new PIL image in mode ``RGB``.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: a URL, an undecodable file, an empty image, a wrong channel count or out-of-range values.
        TypeError: an object that is not an image.
    """
    if isinstance(image, (str, os.PathLike)):
        image = _open_image_file(image)
    elif isinstance(image, torch.Tensor):
        image = _array_to_pil(_tensor_to_numpy(image), channels_first=True)
    elif isinstance(image, np.ndarray):
        image = _array_to_pil(image, channels_first=False)
    elif isinstance(image, PIL.Image.Image):
        _decode(image, getattr(image, "filename", "") or "the PIL image")
    else:
        raise TypeError(
            f"Cannot use an object of type {type(image).__name__} as an image. Pass a PIL image, a numpy array or "
            "torch tensor of shape (H, W), (H, W, C) or (C, H, W), or the path of an image file."
        )
    if image.width == 0 or image.height == 0:
        raise ValueError(
            f"The image is empty ({image.width}x{image.height} pixels). Pass an image with at least one pixel."
        )
    return _pil_to_rgb(PIL.ImageOps.exif_transpose(image))


def pad_to_square(image: PIL.Image.Image, fill: tuple[int, int, int]) -> PIL.Image.Image:
    """Centre an RGB image on a square canvas of its longer side filled with `fill` (LLaVA-1.5's `pad` aspect ratio:
    the image processor then resizes and crops nothing away). Square images come back unchanged."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = PIL.Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def _open_image_file(path: str | os.PathLike) -> PIL.Image.Image:
    """Open and fully decode an image file, with errors that name the file."""
    path_str = os.fspath(path)
    if _URL_PATTERN.match(path_str):
        raise ValueError(
            f"'{path_str}' is a URL; URLs are not fetched. Download the image first and pass its local path "
            "(without a scheme such as file://) or a PIL image."
        )
    file = Path(path_str).expanduser()
    if not file.exists():
        raise FileNotFoundError(f"Image file not found: '{path_str}'. Check the path (relative to {os.getcwd()}).")
    if not file.is_file():
        raise ValueError(f"'{path_str}' is not a file. Pass the path of an image file.")
    try:
        image = PIL.Image.open(file)
    except (OSError, SyntaxError, ValueError) as error:
        raise _undecodable(path_str, error) from error
    _decode(image, path_str)
    return image


def _decode(image: PIL.Image.Image, name: str) -> None:
    """Decode the pixels of a lazily opened image now, so a truncated file fails here with a clear message."""
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise _undecodable(name, error) from error


def _undecodable(name: str, error: Exception) -> ValueError:
    return ValueError(
        f"'{name}' could not be decoded as an image ({error}). The file is truncated, corrupt or not an image: "
        "check it or download it again."
    )


def _tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point() and tensor.dtype != torch.float64:
        tensor = tensor.float()
    return tensor.numpy()


def _array_to_pil(array: np.ndarray, channels_first: bool) -> PIL.Image.Image:
    """Build a PIL image (mode L, LA, RGB or RGBA) from a 2-D or 3-D array of any numeric dtype."""
    if array.size == 0:
        raise ValueError(
            f"The image array is empty (shape {tuple(array.shape)}). Pass an image with at least one pixel."
        )
    if array.ndim == 3:
        array = _to_channels_last(array, channels_first)
        if array.shape[-1] == 1:
            array = array[..., 0]
    elif array.ndim != 2:
        raise ValueError(
            f"An image array must have 2 or 3 dimensions, (H, W), (H, W, C) or (C, H, W); got shape "
            f"{tuple(array.shape)}. Pass a batch as a list of images."
        )
    pixels = _to_uint8(array)
    mode = "L" if pixels.ndim == 2 else _CHANNEL_MODES[pixels.shape[-1]]
    return PIL.Image.fromarray(np.ascontiguousarray(pixels), mode=mode)


def _to_channels_last(array: np.ndarray, channels_first: bool) -> np.ndarray:
    first_fits = array.shape[0] in _CHANNEL_MODES
    last_fits = array.shape[-1] in _CHANNEL_MODES
    if first_fits and last_fits and (array.shape[0] in (3, 4)) != (array.shape[-1] in (3, 4)):
        channels_first = array.shape[0] in (3, 4)
    if first_fits and (channels_first or not last_fits):
        return np.moveaxis(array, 0, -1)
    if last_fits:
        return array
    raise ValueError(
        f"Cannot find the channel axis of an image array of shape {tuple(array.shape)}: the first or last axis must "
        "hold 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) channels."
    )


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Map pixel values to uint8 following the module's depth rules."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise ValueError(
                f"Integer image values must lie in [0, 255] (8-bit) or [0, 65535] (16-bit); got [{low}, {high}]. "
                "Rescale the image to one of these ranges."
            )
        if array.dtype == np.uint16 or high > 255:
            return np.rint(array.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
        if not np.isfinite(array).all():
            raise ValueError("The image contains NaN or infinite values. Pass finite pixel values.")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"Float image values must lie in [0, 1] or [0, 255]; got [{low:.3g}, {high:.3g}]. The image looks "
                "normalized already: pass the raw image and let the processor normalize it."
            )
        scale = 255.0 if high <= 1.0 else 1.0
        return np.rint(array * scale).astype(np.uint8)
    raise TypeError(f"Unsupported image dtype {array.dtype}. Use uint8, uint16, bool, integer or float pixels.")


def _pil_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Convert any PIL mode to RGB: high-depth modes are rescaled, transparency is composited on white."""
    if image.mode in _HIGH_DEPTH_MODES:
        image = _array_to_pil(np.asarray(image), channels_first=False)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        try:
            rgba = image.convert("RGBA")
        except ValueError as error:
            raise ValueError(
                f"Cannot convert a PIL image in mode {image.mode} to RGB ({error}). Convert it to RGBA or RGB first."
            ) from error
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ValueError(
            f"Cannot convert a PIL image in mode {image.mode} to RGB ({error}). Convert it to RGB first."
        ) from error
