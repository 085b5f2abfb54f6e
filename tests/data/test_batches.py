"""Batches and augmentation: shifts and flips are real crops/mirrors, seeded, shape-preserving;
batches are normalized with the recorded mean and std."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from conftest import make_tiny_images
from nfcompile.data import Augment, Preprocessing, augment_batch, calibration_images, image_batches


def _random_uint8(n: int, c: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), generator=generator, dtype=torch.uint8)


def _augment(x: torch.Tensor, augment: Augment, seed: int) -> torch.Tensor:
    return augment_batch(x, augment, torch.Generator().manual_seed(seed))


def _shift_of(original: torch.Tensor, shifted: torch.Tensor, pad: int) -> tuple[int, int] | None:
    """The offset at which ``shifted`` is a crop of the zero-padded ``original``, if any."""
    size = original.shape[-1]
    padded = F.pad(original, (pad, pad, pad, pad))
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            if torch.equal(padded[..., dy:dy + size, dx:dx + size], shifted):
                return dy, dx
    return None


def test_shift_crops_the_padded_image():
    x = _random_uint8(32)
    y = _augment(x, Augment(shift=2), seed=0)
    assert y.shape == x.shape and y.dtype == x.dtype
    offsets = [_shift_of(x[i], y[i], pad=2) for i in range(len(x))]
    assert None not in offsets
    assert len(set(offsets)) > 1  # per sample, not one shift for the batch


def test_flip_mirrors_some_samples():
    x = _random_uint8(64)
    y = _augment(x, Augment(flip=True), seed=0)
    flipped = [torch.equal(y[i], x[i].flip(-1)) for i in range(len(x))]
    kept = [torch.equal(y[i], x[i]) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


def test_shift_and_flip_on_cached_feature_maps():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn((16, 24, 4, 4), generator=generator)  # float activations, any channel count
    y = _augment(x, Augment(flip=True, shift=1), seed=0)
    assert y.shape == x.shape and y.dtype == x.dtype
    for i in range(len(x)):
        assert _shift_of(x[i], y[i], 1) is not None or _shift_of(x[i].flip(-1), y[i], 1) is not None


@pytest.mark.parametrize("augment", [Augment(shift=2), Augment(flip=True), Augment(flip=True, shift=1)])
def test_augmentation_is_deterministic_per_seed(augment):
    x = _random_uint8(32)
    assert torch.equal(_augment(x, augment, seed=5), _augment(x, augment, seed=5))
    assert not torch.equal(_augment(x, augment, seed=5), _augment(x, augment, seed=6))


def test_no_augmentation_returns_the_batch():
    x = _random_uint8(4)
    assert _augment(x, Augment(), seed=0) is x


@pytest.fixture
def images():
    return make_tiny_images(20, seed=4)


PREPROCESSING = Preprocessing(image_size=16, mean=(0.2, 0.4, 0.6), std=(0.1, 0.2, 0.3))


def test_batches_are_normalized_with_the_recorded_mean_and_std(images):
    batches = list(image_batches(images, 8, PREPROCESSING, device=torch.device("cpu")))
    assert [len(y) for _, y in batches] == [8, 8, 4]
    x = torch.cat([x for x, _ in batches])
    assert x.dtype == torch.float32
    mean = torch.tensor(PREPROCESSING.mean).view(1, 3, 1, 1)
    std = torch.tensor(PREPROCESSING.std).view(1, 3, 1, 1)
    assert torch.allclose(x, (images.images.float() / 255 - mean) / std, atol=1e-6)
    assert torch.equal(torch.cat([y for _, y in batches]), images.labels)


def test_shuffled_batches_visit_every_sample_once_in_a_seeded_order(images):
    def order(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        batches = image_batches(images, 6, PREPROCESSING, device=torch.device("cpu"), shuffle=True,
                                generator=generator)
        return [int(y) for _, labels in batches for y in labels]

    assert Counter(order(0)) == Counter(images.labels.tolist())
    assert order(0) == order(0)
    assert order(0) != order(1)


def test_batches_augment_before_normalizing(images):
    generator = torch.Generator().manual_seed(0)
    x, _ = next(image_batches(images, 20, PREPROCESSING, device=torch.device("cpu"),
                              augment=Augment(flip=True), generator=generator))
    pixels = (x * torch.tensor(PREPROCESSING.std).view(1, 3, 1, 1)
              + torch.tensor(PREPROCESSING.mean).view(1, 3, 1, 1)) * 255
    pixels = pixels.round().to(torch.uint8)
    flipped = [torch.equal(pixels[i], images.images[i].flip(-1)) for i in range(20)]
    assert all(flipped[i] or torch.equal(pixels[i], images.images[i]) for i in range(20)) and any(flipped)


def test_calibration_subset_is_fixed_by_its_seed(images):
    first = calibration_images(images, 7, seed=1)
    assert len(first) == 7
    assert torch.equal(first.images, calibration_images(images, 7, seed=1).images)
    rows = {images.images[i].numpy().tobytes() for i in range(len(images))}
    assert all(image.numpy().tobytes() in rows for image in first.images)
    assert len(calibration_images(images, 100, seed=1)) == len(images)
