"""The one preprocessing path: training, validation, calibration and `predict` all use it.

Images are kept as uint8 NCHW RGB tensors already resized to the model's input size; a batch
becomes float by `Preprocessing.normalize` (pixel / 255, then (x - mean) / std).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nfcompile.errors import InputError

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


def decode_image(path: str | Path, size: int) -> torch.Tensor:
    """Read one image file as a (3,size,size) uint8 tensor; a clear InputError if it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
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
            rgb = image.convert("RGB")
            array = np.asarray(rgb, dtype=np.uint8).copy()
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
    tensor = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
    return resize_uint8(tensor, size)[0]
