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


# --------------------------------------------------------------------------- every mode Pillow opens


def _decoded(path, color="rgb", size=None):
    """(H,W,3) uint8 of a decoded image, at its own size unless told."""
    from PIL import Image as _Image

    with _Image.open(path) as image:
        side = size or image.size[0]
    return decode_image(path, side, color).permute(1, 2, 0).numpy()


def _row(values: list[int], dtype) -> np.ndarray:
    return np.array([values] * len(values), dtype=dtype)  # square, so no resize happens


def test_16bit_png_is_scaled_by_its_bit_depth(tmp_path):
    Image.fromarray(_row([0, 257, 32768, 65535], np.uint16)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    decoded = _decoded(tmp_path / "g16.png")
    assert decoded[0, :, 0].tolist() == [0, 1, 128, 255] and (decoded[..., 0] == decoded[..., 2]).all()


def test_16bit_gradient_decodes_to_distinct_levels(tmp_path):
    """The bug this guards: PIL's convert("RGB") clips 16-bit values, so every image came out white."""
    gradient = np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (32, 1))
    Image.fromarray(gradient).save(tmp_path / "gradient.png")
    decoded = _decoded(tmp_path / "gradient.png")[0, :, 0]
    assert decoded.tolist() == np.rint(np.linspace(0, 255, 32)).astype(int).tolist()
    arrays = []
    for level in (1000, 20000, 40000):
        Image.fromarray(np.full((8, 8), level, dtype=np.uint16)).save(tmp_path / f"{level}.png")
        arrays.append(_decoded(tmp_path / f"{level}.png"))
    assert len({a.tobytes() for a in arrays}) == 3 and arrays[0][0, 0, 0] == round(1000 / 257)


def test_16bit_big_endian_tiff_and_pgm(tmp_path):
    big = Image.frombytes("I;16B", (4, 4), _row([0, 257, 32768, 65535], ">u2").tobytes())
    big.save(tmp_path / "big.tif")
    assert Image.open(tmp_path / "big.tif").mode == "I;16B"
    assert _decoded(tmp_path / "big.tif")[0, :, 0].tolist() == [0, 1, 128, 255]
    # A PGM with maxval 1023: Pillow widens it to 0..65535 in mode I.
    (tmp_path / "ten.pgm").write_bytes(b"P5\n2 2\n1023\n" + np.array([0, 1023, 512, 1023], ">u2").tobytes())
    assert Image.open(tmp_path / "ten.pgm").mode == "I"
    assert _decoded(tmp_path / "ten.pgm")[..., 0].tolist() == [[0, 255], [128, 255]]


def test_32bit_integer_tiff(tmp_path):
    top = 2 ** 31 - 1  # Pillow writes mode I as signed 32-bit: the full range ends there
    Image.fromarray(_row([0, top // 2 + 1, top, top], np.int32)).save(tmp_path / "i32.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    assert _decoded(tmp_path / "i32.tif")[0, :, 0].tolist() == [0, 128, 255, 255]
    Image.fromarray(_row([0, -5, 9, 9], np.int32)).save(tmp_path / "negative.tif")
    with pytest.raises(InputError, match="negative.tif: image mode I has negative pixel values"):
        decode_image(tmp_path / "negative.tif", 4)


@pytest.mark.filterwarnings("ignore:IM image format is deprecated:DeprecationWarning")
def test_mode_i_of_unknown_depth_is_refused(tmp_path):
    Image.fromarray(_row([0, 1, 2, 3], np.int32)).save(tmp_path / "deep.im")
    with pytest.raises(InputError) as info:
        decode_image(tmp_path / "deep.im", 4)
    assert str(tmp_path / "deep.im") in str(info.value) and "mode I" in str(info.value)


def test_float_tiff_in_0_1_and_0_255(tmp_path):
    Image.fromarray(_row([0.0, 0.5, 1.0, 0.25], np.float32)).save(tmp_path / "unit.tif")
    assert Image.open(tmp_path / "unit.tif").mode == "F"
    assert _decoded(tmp_path / "unit.tif")[0, :, 0].tolist() == [0, 128, 255, 64]
    Image.fromarray(_row([0.0, 2.0, 254.6, 100.0], np.float32)).save(tmp_path / "bytes.tif")
    assert _decoded(tmp_path / "bytes.tif")[0, :, 0].tolist() == [0, 2, 255, 100]


@pytest.mark.parametrize("values, fragment", [([0.0, 300.0, 1.0, 1.0], "values in [0, 300]"),
                                              ([-0.5, 0.5, 1.0, 1.0], "values in [-0.5, 1]"),
                                              ([0.0, float("nan"), 1.0, 1.0], "NaN or infinite")])
def test_float_outside_the_ranges_is_refused(tmp_path, values, fragment):
    Image.fromarray(_row(values, np.float32)).save(tmp_path / "odd.tif")
    with pytest.raises(InputError) as info:
        decode_image(tmp_path / "odd.tif", 4)
    assert str(tmp_path / "odd.tif") in str(info.value) and "mode F" in str(info.value)
    assert fragment in str(info.value)


def test_palette_with_transparency_is_composited_over_black(tmp_path):
    indices = _row([0, 1, 2, 1], np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([255, 255, 255, 255, 0, 0, 0, 0, 255])
    image.save(tmp_path / "p.png", transparency=0)  # white index 0 is fully transparent
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert _decoded(tmp_path / "p.png")[0].tolist() == [[0, 0, 0], [255, 0, 0], [0, 0, 255], [255, 0, 0]]


def test_alpha_is_composited_over_black(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3], rgba[..., 3] = (200, 100, 50), [0, 128, 255, 64]
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    assert _decoded(tmp_path / "rgba.png")[0].tolist() == [[0, 0, 0], [100, 50, 25], [200, 100, 50], [50, 25, 13]]
    la = np.stack([np.full((4, 4), 200, np.uint8), _row([0, 128, 255, 64], np.uint8)], axis=-1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    assert _decoded(tmp_path / "la.png")[0, :, 0].tolist() == [0, 100, 200, 50]


def test_transparent_colour_keys_are_black(tmp_path):
    Image.fromarray(_row([0, 100, 200, 100], np.uint8)).save(tmp_path / "l.png", transparency=100)
    Image.fromarray(_row([0, 1000, 65535, 1000], np.uint16)).save(tmp_path / "g16.png", transparency=1000)
    for name in ("l.png", "g16.png"):
        assert _decoded(tmp_path / name)[0, :, 0].tolist()[:3] == [0, 0, 255 if name == "g16.png" else 200]


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    assert np.abs(_decoded(tmp_path / "cmyk.jpg")[0, 0].astype(int) - [255, 0, 0]).max() <= 2


def test_one_bit_png(tmp_path):
    Image.fromarray(_row([0, 255, 0, 255], np.uint8)).convert("1").save(tmp_path / "bits.png")
    assert Image.open(tmp_path / "bits.png").mode == "1"
    assert _decoded(tmp_path / "bits.png")[0, :, 1].tolist() == [0, 255, 0, 255]


def test_ycbcr_and_lab_tiffs_decode_to_their_rgb(tmp_path):
    from PIL import ImageCms

    colour = Image.new("RGB", (4, 4), (200, 100, 50))
    colour.convert("YCbCr").save(tmp_path / "ycc.tif")
    to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    ImageCms.applyTransform(colour, to_lab).save(tmp_path / "lab.tif")
    for name, mode in (("ycc.tif", "YCbCr"), ("lab.tif", "LAB")):
        assert Image.open(tmp_path / name).mode == mode
        assert np.abs(_decoded(tmp_path / name)[0, 0].astype(int) - [200, 100, 50]).max() <= 2, name


def test_hsv_converts_through_pillow():
    from nfcompile.data.preprocess import _to_8bit

    hsv = Image.new("RGB", (2, 2), (200, 100, 50)).convert("HSV")
    assert np.abs(_to_8bit(hsv, "x")[0, 0].astype(int) - [200, 100, 50]).max() <= 2


def test_multi_frame_takes_the_first(tmp_path, caplog):
    import logging

    frames = [Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))]
    frames[0].save(tmp_path / "two.gif", save_all=True, append_images=frames[1:])
    logger = logging.getLogger("nfcompile.data.preprocess")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.DEBUG, logger="nfcompile.data.preprocess"):
            assert _decoded(tmp_path / "two.gif")[0, 0].tolist() == [255, 0, 0]
    finally:
        logger.removeHandler(caplog.handler)
    assert "2 frames, using the first" in caplog.text


def test_grayscale_model_gets_grey_in_three_channels(tmp_path):
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "red.png")
    grey = _decoded(tmp_path / "red.png", color="grayscale")
    assert (grey == 76).all()  # ITU-R 601-2 luma of pure red, PIL's "L"
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    for color in ("rgb", "grayscale"):
        decoded = _decoded(tmp_path / "gray.png", color=color)
        assert all((decoded[..., c] == gray).all() for c in range(3))


def test_grayscale_decode_matches_training_images(tmp_path):
    """A grey file decoded for a grayscale model equals the training path (resize grey, then 3 channels)."""
    gray = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "digit.png")
    expected = to_rgb3(resize_uint8(torch.from_numpy(gray)[None, None], 32))[0]
    assert torch.equal(decode_image(tmp_path / "digit.png", 32, "grayscale"), expected)


def test_unknown_color_is_refused(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "a.png")
    with pytest.raises(InputError, match="'sepia' is not one of rgb, grayscale"):
        decode_image(tmp_path / "a.png", 4, "sepia")
    with pytest.raises(ValueError, match="sepia"):
        Preprocessing(image_size=8, mean=(0.5,) * 3, std=(0.5,) * 3, color="sepia")


def test_preprocessing_records_the_colour_and_old_records_read_as_rgb():
    import json

    record = Preprocessing(image_size=8, mean=(0.5,) * 3, std=(0.5,) * 3, color="grayscale").to_dict()
    assert json.loads(json.dumps(record))["color"] == "grayscale"
    old = {k: v for k, v in record.items() if k not in ("color", "input_shape")}
    assert Preprocessing(**old).color == "rgb"
