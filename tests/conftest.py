"""Shared fixtures: a tiny seeded model (3 units, 16x16 input, 4 classes) and small learnable data.

Everything here builds in milliseconds, so the suite stays fast on a 2-core CPU.
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nfcompile.data.datasets import DataBundle, DatasetInfo, ImageSet
from nfcompile.data.preprocess import Preprocessing
from nfcompile.models.adapters import UnitNet
from nfcompile.models.early_exit import MultiExitNet
from nfcompile.models.heads import AuxHead

REPO = Path(__file__).resolve().parents[1]
TINY_CLASSES = 4
TINY_SIZE = 16

# The suite's own profile cache, empty at the start of every session: builds never read or fill the
# user's, and later builds of the same tiny recipes reuse earlier tests' profiles as repeated builds do.
PROFILE_CACHE = tempfile.mkdtemp(prefix="nfcompile-test-cache-")
os.environ["NFCOMPILE_CACHE_DIR"] = PROFILE_CACHE


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(PROFILE_CACHE, ignore_errors=True)


# One thread: the tiny test models gain nothing from a second one, and on a loaded machine
# OpenMP threads of several processes oversubscribing two cores make everything several times slower.
torch.set_num_threads(1)


def _conv_unit(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU())


def make_tiny_unit_net(seed: int = 0) -> UnitNet:
    torch.manual_seed(seed)
    units = [("stem", _conv_unit(3, 8, 1)), ("conv2", _conv_unit(8, 16, 2)), ("conv3", _conv_unit(16, 32, 2))]
    classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(32, TINY_CLASSES))
    return UnitNet(units, classifier, arch="tiny")


def make_tiny_multi_exit(seed: int = 0, filters: int = 8) -> MultiExitNet:
    net = make_tiny_unit_net(seed)
    shapes = net.unit_shapes((3, TINY_SIZE, TINY_SIZE))
    torch.manual_seed(seed + 1)
    heads = {i: AuxHead(out[0], filters, TINY_CLASSES) for i, (_, out) in enumerate(shapes)}
    return MultiExitNet(net, heads)


def make_tiny_images(count: int, seed: int) -> ImageSet:
    """Four classes a small CNN separates: a bright quadrant per class, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % TINY_CLASSES
    images = torch.randint(0, 60, (count, 3, TINY_SIZE, TINY_SIZE), generator=generator, dtype=torch.uint8)
    half = TINY_SIZE // 2
    for i, label in enumerate(labels.tolist()):
        row, col = divmod(label, 2)
        images[i, :, row * half:(row + 1) * half, col * half:(col + 1) * half] += 150
    return ImageSet(images, labels.to(torch.int64))


def make_tiny_data(train: int = 64, val: int = 32, test: int = 32) -> DataBundle:
    preprocessing = Preprocessing(image_size=TINY_SIZE, mean=(0.3, 0.3, 0.3), std=(0.3, 0.3, 0.3))
    info = DatasetInfo("tiny", tuple(f"class{i}" for i in range(TINY_CLASSES)), preprocessing, "tests")
    return DataBundle(make_tiny_images(train, 1), make_tiny_images(val, 2), make_tiny_images(test, 3), info)


def make_pretrained_tiny() -> tuple[UnitNet, DataBundle]:
    """The tiny net trained with plain backprop, then given a fresh classifier: a fine-tuning task."""
    import torch.nn.functional as F

    from nfcompile.data import image_batches

    data = make_tiny_data(train=64, val=32, test=32)
    torch.manual_seed(0)
    model = make_tiny_unit_net(seed=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for epoch in range(8):
        generator = torch.Generator().manual_seed(epoch)
        for x, y in image_batches(data.train, 16, data.preprocessing, device=torch.device("cpu"), shuffle=True,
                                  generator=generator):
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
    model.classifier[2].reset_parameters()
    return model.eval(), data


@pytest.fixture
def tiny_unit_net() -> UnitNet:
    return make_tiny_unit_net()


@pytest.fixture
def tiny_multi_exit() -> MultiExitNet:
    return make_tiny_multi_exit()


@pytest.fixture
def tiny_data() -> DataBundle:
    return make_tiny_data()


def write_recipe(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# A digits recipe small enough for end-to-end runs in tests (seconds, not minutes).
TINY_DIGITS_RECIPE = """\
name: tiny-digits
seed: 0
device: cpu
threads: 1
model: {arch: resnet18, width: 0.25}
data: {dataset: digits, image_size: 16, max_train_samples: 400, max_eval_samples: 120}
budget: {memory: 9MiB}
train:
  epochs: 6
  lr: 0.2
  patience: 0
  # lr 0.2 is already a large-batch rate here (blocks train at batch 48-128 of 400 images): NeuroFlux
  # keeps it (lr_scale 1), as the quickstart does; at 0.4 the exits saturate on out-of-set images.
  neuroflux: {profile_batch_sizes: [4, 16], max_batch_size: 128, lr_scale: 1.0}
bench: {warmup: 2, repeats: 5, batch_sizes: [1, 8]}
select: {policy: smallest_within, within_points: 2.0}
quantize: {calibration_samples: 64, max_accuracy_drop: 0.05}
tensorrt: {opt_batch: 8, max_batch: 8}
"""


@pytest.fixture
def tiny_digits_recipe(tmp_path: Path) -> Path:
    return write_recipe(tmp_path, TINY_DIGITS_RECIPE)


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600,
            env: dict[str, str] | None = None):
    """Run the real CLI in a subprocess (exit codes, stdout/stderr as a user sees them)."""
    import subprocess

    # One OpenMP thread, as in-process tests: see the note at the top of this file.
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "nfcompile", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- CIFAR on disk


CIFAR = {  # dataset: (folder, train files, test file, meta file, label key, names key, classes)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
                "labels", "label_names", 10),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names", 100),
}


def write_pickle(path: Path, obj: object, protocol: int) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def write_cifar(root: Path, dataset: str, *, per_file: int = 6, test: int = 5, protocol: int = 2,
                seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """A tiny CIFAR in the real layout; returns {file: (data, labels)} as written."""
    folder, train_files, test_file, meta_file, label_key, names_key, classes = CIFAR[dataset]
    rng = np.random.default_rng(seed)
    (root / folder).mkdir(parents=True)
    written = {}
    for name in [*train_files, test_file]:
        count = test if name == test_file else per_file
        data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, classes, size=count)]
        entry = {"batch_label": f"batch {name}", "data": data, label_key: labels,
                 "filenames": [f"img_{i}.png" for i in range(count)]}
        if dataset == "cifar100":
            entry["coarse_labels"] = [label // 5 for label in labels]
        write_pickle(root / folder / name, entry, protocol)
        written[name] = (data, labels)
    meta = {names_key: [f"class_{i}" for i in range(classes)]}
    if dataset == "cifar100":
        meta["coarse_label_names"] = [f"super_{i}" for i in range(20)]
    else:
        meta.update(num_cases_per_batch=per_file, num_vis=3072)
    write_pickle(root / folder / meta_file, meta, protocol)
    return written
