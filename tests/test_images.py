"""The one image reader: every file mode gives training (CocoDetection) and predict() the same pixels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from rfdetr.datasets import CocoDetection
from rfdetr.datasets.images import read_image, upright_size
from rfdetr.datasets.inputs import load_image, load_pixels
from rfdetr.datasets.transforms import ToTensor, eval_transforms

HEIGHT, WIDTH = 6, 8
RGB = np.random.default_rng(0).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
GRAY = RGB[:, :, 0]
RAMP16 = np.linspace(0, 65535, HEIGHT * WIDTH).round().astype(np.uint16).reshape(HEIGHT, WIDTH)
ORIENTATION = 0x0112  # the EXIF tag; 6 = "rotate 90 degrees clockwise to display"


def _gray(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[:, :, None], 3, axis=2)


def _turned_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    return exif


def _palette(transparent: bool) -> Callable[[Path], np.ndarray]:
    def write(path: Path) -> np.ndarray:
        image = Image.fromarray(RGB).quantize(8)
        image.save(path, **({"transparency": 0} if transparent else {}))
        palette = np.array(image.getpalette(), dtype=np.uint8).reshape(-1, 3)
        return palette[np.array(image)]  # transparency drops: the palette colour stays
    return write


def _cmyk(path: Path) -> np.ndarray:
    cmyk = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
    cmyk[:2, :, 0] = 255  # full cyan -> (0, 255, 255)
    cmyk[4:, :, 3] = 255  # full black -> black; the rest (no ink) -> white
    Image.fromarray(cmyk, "CMYK").save(path)
    expected = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    expected[:2, :, 0] = 0
    expected[4:] = 0
    return expected


def _animated(path: Path) -> np.ndarray:
    frames = [Image.fromarray(np.full((HEIGHT, WIDTH), value, np.uint8)) for value in (10, 200)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return np.full((HEIGHT, WIDTH, 3), 10, np.uint8)  # the first frame


def _writes(image: Image.Image, expected: np.ndarray | None, **options) -> Callable[[Path], np.ndarray | None]:
    def write(path: Path) -> np.ndarray | None:
        image.save(path, **options)
        return expected
    return write


BILEVEL = GRAY > 127
UNIT_RAMP = RAMP16 / np.float32(65535)
# name -> (file suffix, writer returning the expected H x W x 3 pixels: uint8, float32 in [0, 1], or None
# when only the agreement of training and predict is checked: lossy JPEG)
MODES: dict[str, tuple[str, Callable[[Path], np.ndarray | None]]] = {
    "RGB": (".png", _writes(Image.fromarray(RGB), RGB)),
    "L": (".png", _writes(Image.fromarray(GRAY), _gray(GRAY))),
    "1": (".png", _writes(Image.fromarray(BILEVEL), _gray(np.where(BILEVEL, 255, 0).astype(np.uint8)))),
    "P": (".png", _palette(transparent=False)),
    "P with transparency": (".png", _palette(transparent=True)),
    "LA": (".png", _writes(Image.fromarray(np.dstack([GRAY, RGB[:, :, 1]]), "LA"), _gray(GRAY))),
    "RGBA": (".png", _writes(Image.fromarray(np.dstack([RGB, GRAY])), RGB)),
    "CMYK": (".tif", _cmyk),
    "I;16": (".png", _writes(Image.fromarray(RAMP16), _gray(UNIT_RAMP))),
    "I": (".tif", _writes(Image.fromarray(RAMP16.astype(np.int32), "I"), _gray(UNIT_RAMP))),
    "F": (".tif", _writes(Image.fromarray(UNIT_RAMP), _gray(UNIT_RAMP))),
    "animated GIF": (".gif", _animated),
    # turned clockwise, as a viewer shows it
    "EXIF-rotated PNG": (".png", _writes(Image.fromarray(RGB), np.rot90(RGB, k=-1), exif=_turned_exif())),
    "EXIF-rotated JPEG": (".jpg", _writes(Image.fromarray(RGB), None, quality=95, exif=_turned_exif())),
    "JPEG": (".jpg", _writes(Image.fromarray(RGB), None, quality=90)),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[CocoDetection, dict[str, tuple[int, Path, np.ndarray | None]]]:
    """Every mode's file in one split folder: (dataset, {mode: (index, path, expected pixels)})."""
    split_dir = tmp_path_factory.mktemp("modes") / "train"
    split_dir.mkdir()
    found, images = {}, []
    for index, (mode, (suffix, write)) in enumerate(MODES.items()):
        path = split_dir / f"image_{index}{suffix}"
        found[mode] = (index, path, write(path))
        images.append({"id": index, "file_name": path.name, "height": HEIGHT, "width": WIDTH})
    data = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "thing", "supercategory": "none"}]}
    (split_dir / "_annotations.coco.json").write_text(json.dumps(data))
    return CocoDetection(split_dir), found


@pytest.mark.parametrize("mode", list(MODES))
def test_training_and_predict_read_the_same_pixels(files, mode):
    dataset, found = files
    index, path, expected = found[mode]
    training, _ = ToTensor()(dataset.load_image(index), {})  # decoded, before augmentation and normalisation
    predicted = load_image(path)
    assert training.dtype == predicted.dtype == torch.float32
    assert torch.equal(training, predicted), f"{mode}: training and predict() read different pixels"
    if mode.startswith("EXIF"):
        assert tuple(training.shape) == (3, WIDTH, HEIGHT)  # turned upright
    if expected is not None:
        scale = 255.0 if expected.dtype == np.uint8 else 1.0
        expected = torch.from_numpy(expected.astype(np.float32) / scale).permute(2, 0, 1)
        torch.testing.assert_close(training, expected, rtol=0, atol=1e-7)


def test_every_mode_goes_through_the_evaluation_pipeline(files):
    dataset, found = files
    dataset.transforms = eval_transforms(32)
    for mode, (index, _, _) in found.items():
        image, target = dataset[index]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and torch.isfinite(image).all(), mode
        assert target["size"].tolist() == [32, 32]


def test_8_bit_files_stay_uint8_until_resized(files):
    _, found = files
    for mode in ("RGB", "P", "CMYK", "JPEG"):
        assert read_image(found[mode][1]).dtype == np.uint8
        assert load_pixels(found[mode][1]).dtype == torch.uint8, mode  # predict() converts after resizing


def test_upright_size_reads_the_header_only(files):
    _, found = files
    assert upright_size(found["EXIF-rotated JPEG"][1]) == (HEIGHT, WIDTH)
    assert upright_size(found["I;16"][1]) == (WIDTH, HEIGHT)


def test_truncated_jpeg_fails_and_trailing_bytes_do_not(tmp_path):
    path = tmp_path / "photo.jpg"
    photo = np.random.default_rng(1).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    Image.fromarray(photo).save(path, quality=90)
    whole = path.read_bytes()
    path.write_bytes(whole + b"\0" * 16)  # padding after the end-of-image marker: still a fine JPEG
    assert read_image(path).shape == (48, 64, 3)
    path.write_bytes(whole[: len(whole) * 2 // 3])  # some OpenCV builds would fill the rest with grey
    with pytest.raises(ValueError, match="cannot read image file .*photo.jpg"):
        read_image(path)


def test_float_file_outside_zero_one_is_refused_everywhere(tmp_path):
    path = tmp_path / "depth.tif"
    Image.fromarray(np.full((4, 4), 3.0, np.float32)).save(path)
    with pytest.raises(ValueError, match=r"depth.tif: float pixel values must be in \[0, 1\]"):
        read_image(path)
    with pytest.raises(ValueError, match=r"image 0: float pixel values must be in \[0, 1\]"):
        load_image(Image.open(path))
