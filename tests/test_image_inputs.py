"""Every kind of image a user may pass becomes an upright RGB PIL image, or a clear error."""

import io

import numpy as np
import PIL.Image
import pytest
import torch

from delta_llava.processing.image_inputs import to_rgb_image


def pixels(image: PIL.Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


# ---- PIL modes -------------------------------------------------------------------------------------------------


def test_rgb_is_kept_and_copied():
    source = PIL.Image.new("RGB", (3, 2), (10, 20, 30))
    result = to_rgb_image(source)
    assert result is not source and result.size == (3, 2)
    assert (pixels(result) == [10, 20, 30]).all()


def test_rgba_is_composited_on_white():
    source = PIL.Image.new("RGBA", (3, 1))
    source.putpixel((0, 0), (255, 0, 0, 255))
    source.putpixel((1, 0), (255, 0, 0, 0))
    source.putpixel((2, 0), (0, 0, 0, 128))
    result = pixels(to_rgb_image(source))
    assert result[0, 0].tolist() == [255, 0, 0]
    assert result[0, 1].tolist() == [255, 255, 255]
    assert abs(int(result[0, 2, 0]) - 127) <= 1


@pytest.mark.parametrize("mode, color, expected", [("L", 77, [77, 77, 77]), ("LA", (0, 0), [255, 255, 255])])
def test_gray_modes(mode, color, expected):
    assert pixels(to_rgb_image(PIL.Image.new(mode, (2, 2), color)))[0, 0].tolist() == expected


def test_palette_with_and_without_transparency():
    palette_image = PIL.Image.new("P", (2, 1))
    palette_image.putpalette([0, 0, 255] + [0, 255, 0] + [0, 0, 0] * 254)
    palette_image.putpixel((0, 0), 0)
    palette_image.putpixel((1, 0), 1)
    assert pixels(to_rgb_image(palette_image))[0].tolist() == [[0, 0, 255], [0, 255, 0]]
    palette_image.info["transparency"] = 0
    assert pixels(to_rgb_image(palette_image))[0].tolist() == [[255, 255, 255], [0, 255, 0]]


def test_cmyk():
    red = to_rgb_image(PIL.Image.new("CMYK", (2, 2), (0, 255, 255, 0)))
    assert pixels(red)[0, 0].tolist() == [255, 0, 0]


def test_16_bit_is_scaled_not_clipped():
    values = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    for source in (PIL.Image.fromarray(values), values):
        result = pixels(to_rgb_image(source))[0, :, 0].tolist()
        assert result == [0, 4, 128, 255]


def test_mode_i_reads_8_bit_or_16_bit_by_range():
    sixteen = PIL.Image.fromarray(np.array([[0, 65535]], dtype=np.int32), mode="I")
    eight = PIL.Image.fromarray(np.array([[0, 200]], dtype=np.int32), mode="I")
    assert pixels(to_rgb_image(sixteen))[0, :, 0].tolist() == [0, 255]
    assert pixels(to_rgb_image(eight))[0, :, 0].tolist() == [0, 200]


def test_mode_f_and_float_arrays_in_unit_or_byte_range():
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    assert pixels(to_rgb_image(PIL.Image.fromarray(unit, mode="F")))[0, :, 0].tolist() == [0, 128, 255]
    assert pixels(to_rgb_image(unit * 255))[0, :, 0].tolist() == [0, 128, 255]
    assert pixels(to_rgb_image(unit[..., None].repeat(3, axis=2)))[0, :, 1].tolist() == [0, 128, 255]


def test_exif_rotated_jpeg_is_transposed(tmp_path):
    image = PIL.Image.new("RGB", (40, 20), (200, 10, 10))
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes())
    assert to_rgb_image(path).size == (20, 40)
    assert to_rgb_image(PIL.Image.open(path)).size == (20, 40)


# ---- arrays and tensors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "array, size",
    [
        (np.zeros((5, 7, 3), np.uint8), (7, 5)),  # HWC
        (np.zeros((5, 7), np.uint8), (7, 5)),  # HW
        (np.zeros((3, 5, 7), np.uint8), (7, 5)),  # CHW
        (np.zeros((5, 7, 1), np.uint8), (7, 5)),  # gray HWC
        (np.zeros((5, 7, 4), np.uint8), (7, 5)),  # RGBA HWC
        (np.zeros((5, 7, 2), np.uint8), (7, 5)),  # gray + alpha
        (np.zeros((3, 4, 3), np.uint8), (4, 3)),  # ambiguous: numpy reads channels-last
        (np.ones((5, 7), bool), (7, 5)),
    ],
)
def test_numpy_layouts(array, size):
    assert to_rgb_image(array).size == size


def test_numpy_channel_order_is_kept():
    hwc = np.zeros((2, 2, 3), np.uint8)
    hwc[..., 0] = 255
    assert pixels(to_rgb_image(hwc))[0, 0].tolist() == [255, 0, 0]
    assert pixels(to_rgb_image(np.moveaxis(hwc, -1, 0)))[0, 0].tolist() == [255, 0, 0]


def test_transparent_array_is_composited_on_white():
    rgba = np.zeros((1, 1, 4), np.uint8)
    assert pixels(to_rgb_image(rgba))[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize(
    "tensor, size",
    [
        (torch.rand(3, 5, 7), (7, 5)),  # CHW float in [0, 1]
        (torch.randint(0, 256, (5, 7, 3), dtype=torch.uint8), (7, 5)),  # HWC uint8
        (torch.rand(3, 4, 3), (3, 4)),  # ambiguous: torch reads channels-first
        (torch.rand(3, 5, 7, dtype=torch.bfloat16), (7, 5)),
        (torch.rand(5, 7), (7, 5)),
    ],
)
def test_torch_layouts(tensor, size):
    assert to_rgb_image(tensor).size == size


def test_torch_float_values_are_scaled():
    tensor = torch.zeros(3, 1, 1)
    tensor[1] = 1.0
    assert pixels(to_rgb_image(tensor))[0, 0].tolist() == [0, 255, 0]


def test_paths_as_str_and_pathlib(tmp_path):
    path = tmp_path / "image.png"
    PIL.Image.new("RGBA", (6, 4), (0, 0, 255, 255)).save(path)
    for source in (path, str(path)):
        result = to_rgb_image(source)
        assert result.size == (6, 4) and pixels(result)[0, 0].tolist() == [0, 0, 255]


@pytest.mark.parametrize("size", [(1, 1), (4000, 3000)])
def test_tiny_and_huge_images(size):
    assert to_rgb_image(PIL.Image.new("RGB", size)).size == size
    assert to_rgb_image(np.zeros((size[1], size[0], 3), np.uint8)).size == size


# ---- errors ----------------------------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match="Image file not found: .*nope.jpg"):
        to_rgb_image(missing)


@pytest.mark.parametrize(
    "url", ["https://example.com/cat.jpg", "http://x/y.png", "file:///tmp/cat.png", "data:image/png;base64,AAAA"]
)
def test_urls_are_refused(url):
    with pytest.raises(ValueError, match="URLs are not fetched. Download the image first"):
        to_rgb_image(url)


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("keep", [600, 2000])  # cut in the header / in the pixel data
def test_truncated_file_says_to_check_or_download_again(tmp_path, keep):
    path = tmp_path / "cut.jpg"
    path.write_bytes(jpeg_bytes()[:keep])
    with pytest.raises(ValueError, match=r"could not be decoded as an image.*truncated, corrupt.*download it again"):
        to_rgb_image(path)


def test_truncated_lazily_opened_pil_image(tmp_path):
    path = tmp_path / "cut.jpg"
    path.write_bytes(jpeg_bytes()[:2000])
    with pytest.raises(ValueError, match=r"cut.jpg' could not be decoded as an image"):
        to_rgb_image(PIL.Image.open(path))


def test_file_that_is_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello")
    with pytest.raises(ValueError, match=r"could not be decoded as an image.*download it again"):
        to_rgb_image(path)
    with pytest.raises(ValueError, match="is not a file"):
        to_rgb_image(tmp_path)


@pytest.mark.parametrize("empty", [np.zeros((0, 0, 3), np.uint8), np.zeros((0, 5)), torch.zeros(3, 0, 4)])
def test_zero_size_arrays(empty):
    with pytest.raises(ValueError, match="empty"):
        to_rgb_image(empty)


def test_zero_size_pil_image():
    with pytest.raises(ValueError, match=r"empty \(0x0 pixels\)"):
        to_rgb_image(PIL.Image.new("RGB", (0, 0)))


@pytest.mark.parametrize("shape", [(5, 7, 5), (6, 7, 8)])
def test_wrong_channel_count(shape):
    with pytest.raises(ValueError, match=r"channel axis.*1 \(gray\), 2 \(gray \+ alpha\), 3 \(RGB\) or 4 \(RGBA\)"):
        to_rgb_image(np.zeros(shape, np.uint8))


def test_batch_array_is_refused_with_a_hint():
    with pytest.raises(ValueError, match="2 or 3 dimensions.*Pass a batch as a list"):
        to_rgb_image(np.zeros((2, 4, 4, 3), np.uint8))


@pytest.mark.parametrize(
    "array, message",
    [
        (np.full((2, 2), -0.5), "looks normalized already"),
        (np.full((2, 2), 300.0), "looks normalized already"),
        (np.full((2, 2), np.nan), "NaN or infinite"),
        (np.full((2, 2), 70000, np.int64), r"\[0, 65535\] \(16-bit\)"),
        (np.full((2, 2), -1, np.int16), "Rescale the image"),
    ],
)
def test_out_of_range_values(array, message):
    with pytest.raises(ValueError, match=message):
        to_rgb_image(array)


def test_unsupported_objects():
    with pytest.raises(TypeError, match="Cannot use an object of type int as an image"):
        to_rgb_image(5)
    with pytest.raises(TypeError, match="Unsupported image dtype complex128"):
        to_rgb_image(np.zeros((2, 2), complex))
