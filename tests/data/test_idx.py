"""The MNIST family read from IDX files: the reader's checks, the datasets built on it, stratified splits.

The files are written here in the real format: a magic of two zero bytes, the dtype byte 0x08
(unsigned byte) and the number of dimensions, one big-endian uint32 per dimension, then the bytes;
gzipped (`.gz`, as distributed) or raw. Tests marked `dataset` read the installed Fashion-MNIST.
"""

from __future__ import annotations

import dataclasses
import gzip
import struct
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from nfcompile.data import check_data, load_data
from nfcompile.data import datasets
from nfcompile.data.datasets import FASHION_MNIST_ROOT, IDX_FILES, stratified_take
from nfcompile.data.idx import MAX_ITEMS, read_idx_images, read_idx_labels, read_idx_pair
from nfcompile.errors import InputError, RecipeError
from nfcompile.recipe.schema import DataSection

FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot")
KMNIST_NAMES = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")


def idx_bytes(array: np.ndarray, *, dtype_byte: int = 0x08, ndim: int | None = None) -> bytes:
    ndim = array.ndim if ndim is None else ndim
    return bytes([0, 0, dtype_byte, ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(np.uint8).tobytes()


def write_file(path: Path, content: bytes, gz: bool) -> Path:
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(content, compresslevel=1) if gz else content)
    return path


def images_for(labels: np.ndarray, side: int = 28) -> np.ndarray:
    """Each image's pixels tell its label and its index, so a split can be checked against the files."""
    images = np.zeros((len(labels), side, side), dtype=np.uint8)
    images[:, 0, 0] = labels * 20
    images[:, 0, 1] = np.arange(len(labels)) % 256
    images[:, 1, :] = np.arange(len(labels))[:, None] // 256
    return images


def unbalanced_labels(count: int, seed: int) -> np.ndarray:
    """Classes 0..9 with shares 19%, 17%, ... 1%: stratification is visible."""
    shares = np.arange(19, 0, -2)
    labels = np.repeat(np.arange(10), np.ceil(count * shares / shares.sum()).astype(int))[:count]
    return np.random.default_rng(seed).permutation(labels).astype(np.uint8)


def write_mnist(root: Path, *, train: int = 200, test: int = 50, gz: bool = True) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, count in (("train", train), ("test", test)):
        labels = unbalanced_labels(count, seed=len(split))
        images_name, labels_name = IDX_FILES[split]
        write_file(root / images_name, idx_bytes(images_for(labels)), gz)
        write_file(root / labels_name, idx_bytes(labels), gz)
        written[f"{split}_images"], written[f"{split}_labels"] = images_for(labels), labels
    return written


# --------------------------------------------------------------------------- the reader


@pytest.mark.parametrize("gz", [True, False])
def test_reader_returns_the_arrays_written(tmp_path, gz):
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    images = np.random.default_rng(0).integers(0, 256, (5, 7, 9), dtype=np.uint8)
    images_path = write_file(tmp_path / "images", idx_bytes(images), gz)
    labels_path = write_file(tmp_path / "labels", idx_bytes(labels), gz)
    read_images, read_labels = read_idx_pair(images_path, labels_path, num_classes=10)
    assert read_images.dtype == np.uint8 and np.array_equal(read_images, images)
    assert np.array_equal(read_labels, labels)


def test_gzip_told_by_content_not_name(tmp_path):
    labels = np.array([0, 1], dtype=np.uint8)
    misnamed = tmp_path / "labels.raw"
    misnamed.write_bytes(gzip.compress(idx_bytes(labels)))
    assert np.array_equal(read_idx_labels(misnamed, 2), labels)


IMAGES = np.zeros((4, 5, 5), dtype=np.uint8)


@pytest.mark.parametrize("content, fragment", [
    (b"\x08\x03\x00\x00" + idx_bytes(IMAGES)[4:], "not an IDX file"),
    (b"PK\x03\x04 a zip, not idx", "not an IDX file"),
    (b"", "not an IDX file"),
    (idx_bytes(IMAGES, dtype_byte=0x0D), "dtype byte 0x0d, expected 0x08"),
    (idx_bytes(IMAGES[:, 0, 0]), "1 dimension(s), expected 00000803"),
    (idx_bytes(IMAGES)[:10], "truncated IDX header"),
    (idx_bytes(IMAGES)[:-1], "truncated: holds 99 of the 100"),
    (idx_bytes(IMAGES) + b"\x00", "trailing bytes"),
    (bytes([0, 0, 8, 3]) + struct.pack(">3I", MAX_ITEMS + 1, 28, 28), f"more than the {MAX_ITEMS}"),
    (bytes([0, 0, 8, 3]) + struct.pack(">3I", 4, 0, 5), "0x5 images"),
    (bytes([0, 0, 8, 3]) + struct.pack(">3I", 4, 5000, 5), "5000x5 images"),
    (bytes([0, 0, 8, 3]) + struct.pack(">3I", MAX_ITEMS, 1000, 1000), "GiB this tool reads"),
])
@pytest.mark.parametrize("gz", [True, False])
def test_malformed_images_file_is_named(tmp_path, content, fragment, gz):
    path = write_file(tmp_path / "train-images-idx3-ubyte", content, gz)
    with pytest.raises(InputError) as info:
        read_idx_images(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_gzip_bomb_is_read_only_as_far_as_its_header_promises(tmp_path):
    # The header promises 10 tiny images; the stream goes on for 200 MB of zeros (a few hundred KB gzipped).
    path = tmp_path / "bomb.gz"
    with gzip.open(path, "wb", compresslevel=9) as handle:
        handle.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", 10, 28, 28))
        zeros = bytes(1024 * 1024)
        for _ in range(200):
            handle.write(zeros)
    started = time.perf_counter()
    with pytest.raises(InputError, match="trailing bytes"):
        read_idx_images(path)
    assert time.perf_counter() - started < 1.0  # stopped at the promise, never inflated the rest


def test_truncated_gzip_stream_is_named(tmp_path):
    path = write_file(tmp_path / "labels", idx_bytes(np.arange(1000, dtype=np.uint8) % 10), gz=True)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(InputError) as info:
        read_idx_labels(path, 10)
    assert str(path) in str(info.value)


def test_label_out_of_range_is_named(tmp_path):
    path = write_file(tmp_path / "labels", idx_bytes(np.array([0, 9, 10, 2], dtype=np.uint8)), gz=False)
    with pytest.raises(InputError) as info:
        read_idx_labels(path, 10)
    assert str(path) in str(info.value) and "label 10 at item 2 is outside 0..9" in str(info.value)


def test_images_given_as_labels_are_refused(tmp_path):
    path = write_file(tmp_path / "labels", idx_bytes(IMAGES), gz=False)
    with pytest.raises(InputError, match="expected 00000801"):
        read_idx_labels(path, 10)


def test_count_mismatch_is_named(tmp_path):
    images = write_file(tmp_path / "images", idx_bytes(IMAGES), gz=False)
    labels = write_file(tmp_path / "labels", idx_bytes(np.zeros(3, dtype=np.uint8)), gz=False)
    with pytest.raises(InputError) as info:
        read_idx_pair(images, labels, 10)
    assert str(labels) in str(info.value) and "3 labels" in str(info.value) and "4 images" in str(info.value)


# --------------------------------------------------------------------------- the datasets


@pytest.mark.parametrize("dataset, names", [("fashion_mnist", FASHION_NAMES), ("mnist", tuple("0123456789")),
                                            ("kmnist", KMNIST_NAMES)])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_dataset_loads_the_official_split(tmp_path, dataset, names, gz):
    written = write_mnist(tmp_path, gz=gz)
    section = DataSection(dataset=dataset, root=tmp_path, image_size=28, val_fraction=0.2)
    check_data(section)
    bundle = load_data(section, seed=0)
    assert bundle.info.class_names == names and bundle.info.source == str(tmp_path)
    # t10k is the test split, image for image, grey in three equal channels.
    expected = torch.from_numpy(written["test_images"]).unsqueeze(1).expand(-1, 3, -1, -1)
    assert torch.equal(bundle.test.images, expected)
    assert bundle.test.labels.tolist() == written["test_labels"].tolist()
    # Train and val share the training file between them, each image once.
    index = lambda images: (images[:, 0, 0, 1].int() + 256 * images[:, 0, 1, 0].int()).tolist()  # noqa: E731
    assert sorted(index(bundle.train.images) + index(bundle.val.images)) == list(range(200))
    assert len(bundle.val) == 40
    for split in (bundle.train, bundle.val):
        assert torch.equal(split.images[:, 0, 0, 0].long(), split.labels * 20)  # labels follow their images
    assert bundle.preprocessing.color == "grayscale"
    assert bundle.info.to_dict()["preprocessing"]["color"] == "grayscale"


def test_idx_dataset_is_resized_to_the_input_size(tmp_path):
    write_mnist(tmp_path)
    bundle = load_data(DataSection(dataset="mnist", root=tmp_path, image_size=16), seed=0)
    assert bundle.train.images.shape[1:] == (3, 16, 16) and bundle.test.images.shape == (50, 3, 16, 16)
    assert torch.equal(bundle.train.images[:, 0], bundle.train.images[:, 2])


def test_raw_and_gzipped_files_may_be_mixed(tmp_path):
    write_mnist(tmp_path, gz=True)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(gzip.decompress(labels.read_bytes()))
    labels.unlink()
    assert len(load_data(DataSection(dataset="mnist", root=tmp_path), seed=0).test) == 50


@pytest.mark.parametrize("victim", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])
def test_a_broken_file_in_the_dataset_is_named(tmp_path, victim):
    write_mnist(tmp_path)
    (tmp_path / victim).write_bytes(gzip.compress(b"\x00\x00\x08\x07 not really"))
    with pytest.raises(InputError) as info:
        load_data(DataSection(dataset="mnist", root=tmp_path), seed=0)
    assert str(tmp_path / victim) in str(info.value)


def test_labels_beyond_the_classes_are_named(tmp_path):
    write_mnist(tmp_path)
    write_file(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.full(50, 12, dtype=np.uint8)), gz=True)
    with pytest.raises(InputError, match=r"t10k-labels-idx1-ubyte\.gz: label 12 .* outside 0\.\.9"):
        load_data(DataSection(dataset="kmnist", root=tmp_path), seed=0)


def test_missing_file_is_named_with_where_it_looked(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    started = time.perf_counter()
    with pytest.raises(InputError) as info:
        check_data(DataSection(dataset="mnist", root=tmp_path))
    assert time.perf_counter() - started < 1.0
    assert "t10k-images-idx3-ubyte[.gz]" in info.value.message and str(tmp_path) in info.value.message
    assert "train-images" not in info.value.message  # only what is missing
    with pytest.raises(InputError, match="t10k-images"):
        load_data(DataSection(dataset="mnist", root=tmp_path), seed=0)


def test_missing_fashion_mnist_says_how_to_install_it(tmp_path, monkeypatch):
    absent = tmp_path / "fashion-mnist"
    monkeypatch.setitem(datasets._IDX, "fashion_mnist",
                        dataclasses.replace(datasets._IDX["fashion_mnist"], default_root=absent))
    with pytest.raises(InputError) as info:
        check_data(DataSection(dataset="fashion_mnist"))
    message = str(info.value)
    assert str(absent) in message and "apt-get install -y dataset-fashion-mnist" in message
    assert all(f"{name}[.gz]" in message for pair in IDX_FILES.values() for name in pair)


def test_fashion_mnist_defaults_to_the_debian_folder():
    assert FASHION_MNIST_ROOT == Path("/usr/share/datasets/fashion-mnist")
    assert datasets._idx_root(DataSection(dataset="fashion_mnist")) == FASHION_MNIST_ROOT


@pytest.mark.parametrize("dataset", ["mnist", "kmnist"])
def test_mnist_and_kmnist_need_a_root(dataset):
    with pytest.raises(RecipeError, match="data.root"):
        check_data(DataSection(dataset=dataset))


# --------------------------------------------------------------------------- stratified splits


def test_stratified_take_keeps_each_class_share():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 15 + [3] * 5)[torch.randperm(100)]
    taken, rest = stratified_take(labels, 20, torch.Generator().manual_seed(0))
    assert Counter(labels[taken].tolist()) == {0: 10, 1: 6, 2: 3, 3: 1}
    assert sorted(taken.tolist() + rest.tolist()) == list(range(100))
    # 7 of 100 is 3.5, 2.1, 1.05, 0.35 a class: rounded down that is 6, the one left goes to the largest remainder.
    taken, _ = stratified_take(labels, 7, torch.Generator().manual_seed(0))
    assert Counter(labels[taken].tolist()) == {0: 4, 1: 2, 2: 1}
    assert len(labels[stratified_take(labels, 100, torch.Generator())[0]]) == 100


def _shares(labels: torch.Tensor) -> np.ndarray:
    return np.bincount(labels.numpy(), minlength=10) / len(labels)


def test_val_and_subsets_are_stratified(tmp_path):
    write_mnist(tmp_path, train=1000, test=300)
    bundle = load_data(DataSection(dataset="mnist", root=tmp_path, val_fraction=0.1, max_train_samples=200,
                                   max_eval_samples=60), seed=3)
    pool = unbalanced_labels(1000, seed=len("train"))
    expected = np.bincount(pool, minlength=10) / len(pool)
    for split, size in ((bundle.train, 200), (bundle.val, 60), (bundle.test, 60)):
        assert len(split) == size
        # Largest remainder: each class within one image of its exact share.
        assert np.abs(_shares(split.labels) * size - expected * size).max() < 1.0 + 1e-9, split


def test_splits_follow_the_seed(tmp_path):
    write_mnist(tmp_path)
    section = DataSection(dataset="mnist", root=tmp_path)
    first, again, other = (load_data(section, seed=s) for s in (0, 0, 1))
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(first, name).images, getattr(again, name).images)
        assert torch.equal(getattr(first, name).labels, getattr(again, name).labels)
    assert not torch.equal(first.val.images, other.val.images)
    assert Counter(first.val.labels.tolist()) == Counter(other.val.labels.tolist())  # same shares


# --------------------------------------------------------------------------- the installed Fashion-MNIST


needs_fashion_mnist = pytest.mark.skipif(
    not all((FASHION_MNIST_ROOT / f"{name}.gz").is_file() for pair in IDX_FILES.values() for name in pair),
    reason=f"Fashion-MNIST is not installed in {FASHION_MNIST_ROOT} (apt-get install -y dataset-fashion-mnist)")


@pytest.mark.dataset
@needs_fashion_mnist
def test_installed_fashion_mnist_loads_fast_with_its_official_split():
    section = DataSection(dataset="fashion_mnist", image_size=28, val_fraction=0.1)
    started = time.perf_counter()
    bundle = load_data(section, seed=0)
    seconds = time.perf_counter() - started
    assert seconds < 10.0, f"loading Fashion-MNIST took {seconds:.1f} s"
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (54000, 6000, 10000)
    assert bundle.info.num_classes == 10 and bundle.info.class_names == FASHION_NAMES
    assert bundle.info.source == str(FASHION_MNIST_ROOT)
    # Fashion-MNIST is balanced (6000 a class in train, 1000 in test); stratification keeps it so.
    assert np.bincount(bundle.val.labels.numpy()).tolist() == [600] * 10
    assert np.bincount(bundle.test.labels.numpy()).tolist() == [1000] * 10
    assert bundle.train.images.shape[1:] == (3, 28, 28) and bundle.preprocessing.color == "grayscale"
