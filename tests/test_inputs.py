"""predict() input conversion: formats users pass, and clear errors for bad ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rfdetr.datasets.inputs import as_image_list, load_image, load_pixels

RGB = np.random.default_rng(0).integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
EXPECTED = torch.from_numpy(RGB).permute(2, 0, 1).float() / 255


def test_uint8_array_pil_and_file_agree(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(RGB).save(path)
    for image in (RGB, Image.fromarray(RGB), path, str(path), EXPECTED.clone()):
        torch.testing.assert_close(load_image(image), EXPECTED)


def test_float_array_in_unit_range_is_taken_as_is():
    torch.testing.assert_close(load_image(RGB.astype(np.float64) / 255), EXPECTED)


def test_grayscale_rgba_and_16_bit_are_converted(tmp_path):
    gray = RGB[:, :, 0]
    torch.testing.assert_close(load_image(gray), EXPECTED[:1].expand(3, -1, -1))
    rgba = np.concatenate([RGB, np.full((6, 8, 1), 7, np.uint8)], axis=2)
    torch.testing.assert_close(load_image(rgba), EXPECTED)
    torch.testing.assert_close(load_image(Image.fromarray(rgba)), EXPECTED)
    sixteen = (gray.astype(np.uint16) * 257)
    torch.testing.assert_close(load_image(sixteen), EXPECTED[:1].expand(3, -1, -1))
    path = tmp_path / "gray16.png"
    Image.fromarray(sixteen).save(path)
    torch.testing.assert_close(load_image(path), EXPECTED[:1].expand(3, -1, -1))


def test_reversed_array_views_are_read():
    bgr = np.ascontiguousarray(RGB[..., ::-1])
    torch.testing.assert_close(load_image(bgr[..., ::-1]), EXPECTED)  # the usual OpenCV BGR -> RGB view
    torch.testing.assert_close(load_image(RGB[::-1, ::-1]), EXPECTED.flip(1, 2))
    torch.testing.assert_close(load_image((RGB / 255.0)[:, ::-1]), EXPECTED.flip(2))
    torch.testing.assert_close(load_image((RGB.astype(np.uint16) * 257)[::-1]), EXPECTED.flip(1))
    assert load_pixels(bgr[..., ::-1]).dtype == torch.uint8  # still converted to float only after resizing


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(path, exif=exif)
    assert tuple(load_image(path).shape) == (3, 20, 10)


@pytest.mark.parametrize("image, error, message", [
    (RGB.astype(np.float32), ValueError, r"image 0: float pixel values must be in \[0, 1\]"),
    (np.zeros((4, 4, 2), np.uint8), ValueError, "expected an H x W x 3"),
    (torch.rand(4, 5, 5), ValueError, r"expected a \[3, H, W\] tensor"),
    (torch.zeros(3, 4, 4, dtype=torch.uint8), ValueError, "float tensor"),
    ("no/such/file.jpg", FileNotFoundError, "no/such/file.jpg"),
    (12, ValueError, "unsupported type int"),
])
def test_bad_inputs_are_named(image, error, message):
    with pytest.raises(error, match=message):
        load_image(image)


def test_unreadable_file_and_empty_list(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg"):
        load_image(broken)
    with pytest.raises(ValueError, match="empty list"):
        as_image_list([])
    assert as_image_list(RGB)[1] is False and as_image_list([RGB, RGB])[1] is True


def test_jpeg_fast_decoder_gives_the_pixels_pil_gives(tmp_path):
    path = tmp_path / "photo.jpg"
    photo = np.random.default_rng(1).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    Image.fromarray(photo).save(path, quality=90)
    with Image.open(path) as opened:
        expected = torch.from_numpy(np.array(opened.convert("RGB"))).permute(2, 0, 1)
    pixels = load_pixels(path)
    assert pixels.dtype == torch.uint8 and pixels.shape == expected.shape
    # Both use libjpeg(-turbo); their IDCTs may differ by a level on some builds.
    assert (pixels.int() - expected.int()).abs().max() <= 1


def test_nan_pixels_are_refused():
    image = np.full((4, 4, 3), 0.5, np.float32)
    image[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        load_image(image)
