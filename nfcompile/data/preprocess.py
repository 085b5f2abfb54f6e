"""The one preprocessing path: training, validation, calibration and `predict` all use it.

Images are kept as uint8 NCHW RGB tensors already resized to the model's input size; a batch
becomes float by `Preprocessing.normalize` (pixel / 255, then (x - mean) / std).

Every user image enters through `decode_image`, which turns each mode Pillow opens into 8-bit grey
or RGB by what its values mean: 16- and 32-bit integers are scaled by their real bit depth (65535 ->
255), floats within [0, 1] by 255 (within [0, 255] taken as they are, anything else refused),
transparency is composited over black, multi-frame files give their first frame. A mode it cannot
convert correctly is refused with an `InputError` naming the file and the mode.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nfcompile.core.log import get_logger
from nfcompile.errors import InputError

log = get_logger(__name__)

# A decoded image larger than this is refused before it fills memory (PIL's own guard is a warning).
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
# The colour of the training images. A grayscale-trained model gets every image as grey (ITU-R 601-2
# luma, PIL's "L") in three equal channels, exactly as its training images were fed.
COLORS = ("rgb", "grayscale")


@dataclass(frozen=True)
class Preprocessing:
    """Everything a deployment needs to feed the model; recorded in the manifest and ONNX metadata."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str = "RGB"
    layout: str = "NCHW"
    resize: str = "bilinear, antialiased, to image_size x image_size (aspect ratio not kept)"
    scale: str = "pixel / 255"
    dtype: str = "float32"
    # Colour of the training images (absent from older manifests: they read as "rgb").
    color: str = "rgb"

    def __post_init__(self) -> None:
        if self.color not in COLORS:
            raise ValueError(f"Preprocessing.color {self.color!r} is not one of {', '.join(COLORS)}")

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N,3,H,W) -> normalized float32."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
        # In place: this runs inside the measured training step, one float copy is enough.
        return images.to(torch.float32, copy=True).div_(255.0).sub_(mean).div_(std)

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["input_shape"] = [3, self.image_size, self.image_size]
        return data


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N,C,H,W) uint8 -> (N,C,size,size) uint8, the same resampling for every source."""
    if images.shape[-2:] == (size, size):
        return images.contiguous()
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear",
                            align_corners=False, antialias=True)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def to_rgb3(images: torch.Tensor) -> torch.Tensor:
    """Grayscale (N,1,H,W) becomes three identical channels; RGB passes through."""
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    if images.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {images.shape[1]}")
    return images


def decode_image(path: str | Path, size: int, color: str = "rgb") -> torch.Tensor:
    """Read one image file as a (3,size,size) uint8 tensor; a clear InputError if it cannot be read.

    ``color`` is `Preprocessing.color`: "grayscale" turns the image grey first, then three equal channels.
    """
    if color not in COLORS:
        raise InputError(f"preprocessing color {color!r} is not one of {', '.join(COLORS)}")
    pixels = _pixels(Path(path))  # (H,W) grey or (H,W,3) RGB, uint8
    if color == "grayscale" and pixels.ndim == 3:
        pixels = _luma(pixels)
    tensor = torch.from_numpy(pixels)
    tensor = (tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)).unsqueeze(0)
    return to_rgb3(resize_uint8(tensor, size))[0]


def _pixels(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        # PIL warns (on stderr) about images beyond its own, larger limit: ours refuses them anyway.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise InputError(f"{path}: image is {width}x{height} pixels, more than the "
                                 f"{MAX_IMAGE_PIXELS} this tool decodes")
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                log.debug("%s: %d frames, using the first", path, frames)
            return np.array(_to_8bit(image, path), dtype=np.uint8, order="C")  # a writable copy for torch
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not an image file") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image file PIL can read (corrupt or unknown format)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: cannot decode image ({exc})") from None


_GREY_8BIT = ("1", "L")
_COLOR_8BIT = ("RGB", "RGBX", "CMYK", "YCbCr", "HSV", "P")  # PIL's own conversion to RGB is exact for these
_WITH_ALPHA = ("LA", "PA", "RGBA")
_PREMULTIPLIED = ("La", "RGBa")  # already composited over black: the colour channels as they are
_UINT16 = ("I;16", "I;16L", "I;16B", "I;16N")


def _to_8bit(image, path: Path) -> np.ndarray:
    """(H,W) grey or (H,W,3) RGB uint8 from any mode handled here; InputError naming the mode otherwise."""
    mode = image.mode
    if mode in _WITH_ALPHA or (mode in _GREY_8BIT + _COLOR_8BIT and _has_transparency(image)):
        return _over_black(np.asarray(image.convert("LA" if mode in ("LA", "L") else "RGBA")))
    if mode in _PREMULTIPLIED:
        return _colour_channels(np.asarray(image))
    if mode in _GREY_8BIT:
        return np.asarray(image.convert("L"))
    if mode in _COLOR_8BIT:
        return np.asarray(image.convert("RGB"))
    if mode == "LAB":
        return _lab_to_rgb(image, path)
    if mode in _UINT16:
        return _scaled(_keyed_out(np.asarray(image), image), 16, path, mode)
    if mode == "I":
        values, bits = _int32_pixels(image, path)
        return _scaled(_keyed_out(values, image), bits, path, mode)
    if mode == "F":
        return _float_to_8bit(np.asarray(image), path)
    raise InputError(f"{path}: image mode {mode} cannot be converted to 8-bit RGB by this tool")


def _has_transparency(image) -> bool:
    """A transparent colour key, or a palette with alpha (Pillow 10.0 lacks `has_transparency_data`)."""
    return "transparency" in image.info or (image.mode == "P" and image.palette is not None
                                            and image.palette.mode.endswith("A"))


def _keyed_out(values: np.ndarray, image) -> np.ndarray:
    """A grey colour key (PNG tRNS on 16-bit grey) is transparent: black, as composited over black."""
    key = image.info.get("transparency")
    return np.where(values == key, 0, values) if isinstance(key, int) else values


def _over_black(pixels: np.ndarray) -> np.ndarray:
    """Transparency composited over black (the MNIST family's background, and what zero padding adds):
    colour times alpha, rounded: (H,W,2) LA -> (H,W), (H,W,4) RGBA -> (H,W,3)."""
    alpha = pixels[..., -1:].astype(np.uint32)
    premultiplied = (pixels.astype(np.uint32) * alpha + 127) // 255
    return _colour_channels(premultiplied.astype(np.uint8))


def _colour_channels(pixels: np.ndarray) -> np.ndarray:
    """(H,W,2) -> (H,W) grey, (H,W,4) -> (H,W,3) RGB: the alpha channel dropped."""
    return pixels[..., 0] if pixels.shape[-1] == 2 else pixels[..., :3]


def _scaled(values: np.ndarray, bits: int, path: Path, mode: str) -> np.ndarray:
    """Integer pixels of ``bits`` (unsigned) depth, full range -> 0..255, rounded."""
    if values.size and int(values.min()) < 0:
        raise InputError(f"{path}: image mode {mode} has negative pixel values; cannot convert to 8-bit")
    top = float(2 ** bits - 1)
    return np.rint(values.astype(np.float64) * (255.0 / top)).clip(0, 255).astype(np.uint8)


def _int32_pixels(image, path: Path) -> tuple[np.ndarray, int]:
    """Mode I holds 32-bit integers; the real bit depth comes from the file format."""
    values = np.asarray(image)
    if image.format in ("PNG", "PPM"):  # Pillow widens their 16-bit (and PGM's maxval) to 0..65535
        return values, 16
    if image.format == "TIFF":
        bits = int(image.tag_v2.get(258, (32,))[0])
        signed = image.tag_v2.get(339, 1) in (2, (2,))
        if not signed and bits == 32:
            return values.view(np.uint32), 32  # Pillow keeps unsigned 32-bit values in int32 storage
        return values, bits - 1 if signed else bits
    raise InputError(f"{path}: image mode I from a {image.format or 'unknown'} file: its bit depth is unknown, "
                     "cannot convert to 8-bit")


def _float_to_8bit(values: np.ndarray, path: Path) -> np.ndarray:
    """Float pixels within [0, 1] are scaled by 255; within [0, 255] taken as they are; else refused."""
    if not np.isfinite(values).all():
        raise InputError(f"{path}: image mode F has NaN or infinite pixel values")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low >= 0.0 and high <= 1.0:
        values = values * 255.0
    elif not (low >= 0.0 and high <= 255.0):
        raise InputError(f"{path}: image mode F has values in [{low:g}, {high:g}]; only [0, 1] or [0, 255] "
                         "convert to 8-bit")
    return np.rint(values).clip(0, 255).astype(np.uint8)


def _lab_to_rgb(image, path: Path) -> np.ndarray:
    """CIE L*a*b* (D50) to sRGB through littlecms: Pillow's plain convert("RGB") copies the bytes as they are."""
    try:
        from PIL import ImageCms
    except ImportError as exc:  # Pillow built without littlecms
        raise InputError(f"{path}: image mode LAB needs Pillow's ImageCms (littlecms): {exc}") from None
    try:
        transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                            "LAB", "RGB")
        return np.asarray(ImageCms.applyTransform(image, transform))
    except ImageCms.PyCMSError as exc:
        raise InputError(f"{path}: image mode LAB could not be converted to RGB ({exc})") from None


def _luma(rgb: np.ndarray) -> np.ndarray:
    """PIL's "L" conversion (ITU-R 601-2), the grey a grayscale-trained model sees."""
    from PIL import Image

    return np.array(Image.fromarray(rgb, "RGB").convert("L"))
