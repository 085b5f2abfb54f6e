"""The one preprocessing path: image decoding, resizing and the recorded normalization."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nfcompile.data import Preprocessing, decode_image
from nfcompile.data.preprocess import resize_uint8, to_rgb3
from nfcompile.errors import InputError


def test_grayscale_and_rgba_decode_to_rgb(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    decoded = decode_image(tmp_path / "gray.png", 8)
    assert decoded.dtype == torch.uint8 and decoded.shape == (3, 8, 8)
    assert torch.equal(decoded[0], torch.from_numpy(gray)) and torch.equal(decoded[0], decoded[2])
    assert decode_image(tmp_path / "rgba.png", 8)[:, 0, 0].tolist() == [200, 0, 0]


def test_decode_resizes_to_the_input_size(tmp_path):
    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "wide.jpg", quality=100)
    decoded = decode_image(tmp_path / "wide.jpg", 16)
    assert decoded.shape == (3, 16, 16)
    assert (decoded.int() - torch.tensor([10, 20, 30]).view(3, 1, 1)).abs().max() <= 2  # JPEG rounding


def _text_file(folder):
    path = folder / "text.png"
    path.write_text("hello")
    return path


@pytest.mark.parametrize("make, fragment", [
    (lambda tmp: tmp / "absent.png", "not found"),
    (lambda tmp: tmp, "is a folder"),
    (_text_file, "not an image"),
])
def test_unreadable_image_is_named(tmp_path, make, fragment):
    path = make(tmp_path)
    with pytest.raises(InputError) as info:
        decode_image(path, 8)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_resize_keeps_uint8_range_and_passes_same_size_through():
    images = torch.randint(0, 256, (2, 3, 10, 10), dtype=torch.uint8)
    assert torch.equal(resize_uint8(images, 10), images)
    resized = resize_uint8(images, 4)
    assert resized.dtype == torch.uint8 and resized.shape == (2, 3, 4, 4)
    assert torch.equal(resize_uint8(torch.full((1, 3, 9, 7), 255, dtype=torch.uint8), 5),
                       torch.full((1, 3, 5, 5), 255, dtype=torch.uint8))


def test_to_rgb3():
    gray = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    assert torch.equal(to_rgb3(gray), gray.expand(-1, 3, -1, -1))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        to_rgb3(torch.zeros((1, 2, 4, 4), dtype=torch.uint8))


def test_preprocessing_record():
    preprocessing = Preprocessing(image_size=24, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    record = preprocessing.to_dict()
    assert record["input_shape"] == [3, 24, 24] and record["channel_order"] == "RGB"
    assert record["mean"] == (0.5, 0.5, 0.5) and record["std"] == (0.25, 0.25, 0.25)
    x = preprocessing.normalize(torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2))
    assert x[0, :, 0].tolist() == [[-2.0, 2.0]] * 3


def test_preprocessing_records_the_colour_and_old_records_read_as_rgb():
    import json

    record = Preprocessing(image_size=8, mean=(0.5,) * 3, std=(0.5,) * 3, color="grayscale").to_dict()
    assert json.loads(json.dumps(record))["color"] == "grayscale"
    old = {k: v for k, v in record.items() if k not in ("color", "input_shape")}
    assert Preprocessing(**old).color == "rgb"
