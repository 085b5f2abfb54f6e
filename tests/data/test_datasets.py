"""Datasets: digits splits, CIFAR-10/100 read from files in the real on-disk format, image folders.

The CIFAR files are written here the way the real python batches are: pickled dicts whose `data`
is a uint8 array (N, 3072: 1024 red, then green, then blue values per image) and whose labels are
a list of ints, under `cifar-10-batches-py/` or `cifar-100-python/`.
"""

from __future__ import annotations

import logging
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nfcompile.data import DataBundle, ImageSet, check_data, load_data
from nfcompile.errors import InputError, RecipeError
from nfcompile.recipe.schema import DataSection

from conftest import CIFAR, write_pickle, write_cifar

DIGITS_COUNT = 1797  # images in scikit-learn's bundled digits


def _samples(images: ImageSet) -> Counter:
    """The multiset of (image bytes, label): compares splits regardless of order."""
    return Counter((image.numpy().tobytes(), int(label)) for image, label in zip(images.images, images.labels))


def _all_samples(bundle: DataBundle) -> Counter:
    return _samples(bundle.train) + _samples(bundle.val) + _samples(bundle.test)


# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits_seed0() -> DataBundle:
    return load_data(DataSection(image_size=8), seed=0)


def test_digits_split_partitions_the_dataset(digits_seed0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    # At size 8 nothing is resized: the 17 grey levels (0..16) come back from the uint8 pixels.
    reference = Counter((level.astype(np.uint8).tobytes(), int(label))
                        for level, label in zip(digits.images, digits.target))
    found = Counter()
    for split in (digits_seed0.train, digits_seed0.val, digits_seed0.test):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (3, 8, 8)
        assert torch.equal(split.images[:, 0], split.images[:, 1])  # grey, as three equal channels
        levels = (split.images[:, 0].double() * 16 / 255).round().to(torch.uint8)
        found += Counter((level.numpy().tobytes(), int(label)) for level, label in zip(levels, split.labels))
    assert found == reference  # every image exactly once across train, val and test


def test_digits_split_sizes_follow_the_fractions():
    bundle = load_data(DataSection(image_size=8, val_fraction=0.1, test_fraction=0.2), seed=0)
    assert len(bundle.test) == round(DIGITS_COUNT * 0.2)
    assert len(bundle.val) == round(DIGITS_COUNT * 0.1)
    assert len(bundle.train) == DIGITS_COUNT - len(bundle.test) - len(bundle.val)


def test_digits_split_is_deterministic_per_seed(digits_seed0):
    again = load_data(DataSection(image_size=8), seed=0)
    other = load_data(DataSection(image_size=8), seed=1)
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(again, name).images, getattr(digits_seed0, name).images)
        assert torch.equal(getattr(again, name).labels, getattr(digits_seed0, name).labels)
    assert not torch.equal(other.test.labels, digits_seed0.test.labels)
    assert _all_samples(other) == _all_samples(digits_seed0)


def test_digits_resized_and_described():
    bundle = load_data(DataSection(image_size=20), seed=0)
    assert bundle.train.images.dtype == torch.uint8 and bundle.train.images.shape[1:] == (3, 20, 20)
    assert bundle.train.labels.dtype == torch.int64
    info = bundle.info
    assert info.class_names == tuple(str(i) for i in range(10)) and info.num_classes == 10
    # Normalization is measured on the training split and recorded for the manifest.
    pixels = bundle.train.images.double() / 255
    assert info.preprocessing.mean == pytest.approx(pixels.mean(dim=(0, 2, 3)).tolist(), abs=1e-4)
    assert info.preprocessing.std == pytest.approx(pixels.std(dim=(0, 2, 3)).tolist(), abs=1e-4)
    assert info.to_dict()["preprocessing"]["input_shape"] == [3, 20, 20]


def test_recipe_normalization_overrides_the_measured_one():
    bundle = load_data(DataSection(image_size=8, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.25)), seed=0)
    assert bundle.preprocessing.mean == (0.5, 0.4, 0.3) and bundle.preprocessing.std == (0.2, 0.2, 0.25)


def test_max_samples_take_subsets_of_the_same_split(digits_seed0):
    limited = load_data(DataSection(image_size=8, max_train_samples=100, max_eval_samples=50), seed=0)
    assert (len(limited.train), len(limited.val), len(limited.test)) == (100, 50, 50)
    for name in ("train", "val", "test"):
        assert not _samples(getattr(limited, name)) - _samples(getattr(digits_seed0, name))


def test_the_monitored_part_of_val_is_a_stratified_subset_and_moves_no_other_split(digits_seed0):
    bundle = load_data(DataSection(image_size=8, monitor_samples=60), seed=0)
    assert digits_seed0.monitor is digits_seed0.val  # none asked for: every epoch evaluates all of val
    for name in ("train", "val", "test"):  # drawn last: no other split changes
        assert _samples(getattr(bundle, name)) == _samples(getattr(digits_seed0, name))
    assert len(bundle.monitor) == 60 and not _samples(bundle.monitor) - _samples(bundle.val)
    shares = lambda labels: torch.bincount(labels, minlength=10) / len(labels)
    assert torch.allclose(shares(bundle.monitor.labels), shares(bundle.val.labels), atol=1 / 60)


def test_digits_refuse_a_root(tmp_path):
    with pytest.raises(RecipeError, match="data.root"):
        check_data(DataSection(root=tmp_path))


# --------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_reads_the_real_format(tmp_path, dataset, protocol):
    written = write_cifar(tmp_path, dataset, protocol=protocol)
    _, train_files, test_file, _, _, _, classes = CIFAR[dataset]
    section = DataSection(dataset=dataset, root=tmp_path, image_size=32)
    check_data(section)
    bundle = load_data(section, seed=0)
    # CIFAR's own test set is the test split, image for image: rows are R, G, B planes of 32x32.
    data, labels = written[test_file]
    assert torch.equal(bundle.test.images, torch.from_numpy(data.reshape(-1, 3, 32, 32)))
    assert bundle.test.labels.tolist() == labels
    # Train and val split the training batches between them.
    train = Counter((row.reshape(3, 32, 32).tobytes(), label) for name in train_files
                    for row, label in zip(*written[name]))
    assert _samples(bundle.train) + _samples(bundle.val) == train
    assert len(bundle.val) == round(sum(train.values()) * section.val_fraction)
    assert bundle.info.class_names == tuple(f"class_{i}" for i in range(classes))
    assert bundle.info.source == str(tmp_path / CIFAR[dataset][0])


def test_cifar_resized_to_the_input_size(tmp_path):
    write_cifar(tmp_path, "cifar10")
    bundle = load_data(DataSection(dataset="cifar10", root=tmp_path, image_size=16), seed=0)
    assert bundle.train.images.dtype == torch.uint8 and bundle.train.images.shape[1:] == (3, 16, 16)
    assert bundle.test.images.shape == (5, 3, 16, 16)


@pytest.mark.parametrize("dataset, archive", [("cifar10", "cifar-10-python.tar.gz"),
                                              ("cifar100", "cifar-100-python.tar.gz")])
def test_missing_cifar_says_where_it_looked_and_what_to_put_there(tmp_path, dataset, archive):
    section = DataSection(dataset=dataset, root=tmp_path / "data")
    with pytest.raises(InputError) as info:
        check_data(section)
    folder = tmp_path / "data" / CIFAR[dataset][0]
    assert str(folder) in info.value.message and CIFAR[dataset][1][0] in info.value.message
    assert archive in info.value.hint and str(tmp_path / "data") in info.value.hint
    with pytest.raises(InputError):
        load_data(section, seed=0)


def test_cifar_with_one_file_missing_names_it(tmp_path):
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(InputError, match="test_batch"):
        check_data(DataSection(dataset="cifar10", root=tmp_path))


@pytest.mark.parametrize("victim", ["data_batch_3", "batches.meta", "test_batch"])
def test_crafted_cifar_pickle_is_refused_not_run(tmp_path, victim):
    write_cifar(tmp_path, "cifar10")
    marker = tmp_path / "executed"
    payload = b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."  # os.system("touch ...")
    (tmp_path / "cifar-10-batches-py" / victim).write_bytes(payload)
    with pytest.raises(InputError) as info:
        load_data(DataSection(dataset="cifar10", root=tmp_path), seed=0)
    assert victim in str(info.value) and "system" in str(info.value)
    assert not marker.exists()
    pickle.loads(payload)  # plain pickle (what torchvision uses) would have run it
    assert marker.exists()


def test_cifar_batch_of_the_wrong_shape(tmp_path):
    write_cifar(tmp_path, "cifar10")
    entry = {"data": np.zeros((4, 1024), dtype=np.uint8), "labels": [0, 1, 2, 3]}
    write_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_2", entry, 2)
    with pytest.raises(InputError, match="data_batch_2.*3072"):
        load_data(DataSection(dataset="cifar10", root=tmp_path), seed=0)


# --------------------------------------------------------------------------- image folders


COLORS = {"blue": (0, 0, 255), "green": (0, 200, 0), "red": (220, 10, 10)}


def write_images(folder: Path, per_class: int, classes: dict[str, tuple[int, int, int]] = COLORS) -> None:
    """Solid-colour images of assorted sizes and modes: one colour per class."""
    for name, color in classes.items():
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            image = Image.new("RGB", (12 + 3 * i, 10 + i), color)
            if i % 2:  # palette PNGs must decode to the same RGB
                image = image.convert("P", palette=Image.Palette.ADAPTIVE)
            image.save(folder / name / f"{i}.png")


def _assert_colors_match_labels(images: ImageSet, class_names: tuple[str, ...]) -> None:
    for image, label in zip(images.images, images.labels):
        expected = torch.tensor(COLORS[class_names[label]], dtype=torch.uint8).view(3, 1, 1)
        assert torch.equal(image, expected.expand(3, 16, 16))


def test_imagefolder_flat_layout(tmp_path):
    write_images(tmp_path / "photos", per_class=5)
    bundle = load_data(DataSection(dataset="imagefolder", root=tmp_path / "photos", image_size=16,
                                   val_fraction=0.2, test_fraction=0.2), seed=0)
    assert bundle.info.class_names == ("blue", "green", "red")
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (9, 3, 3)
    for split in (bundle.train, bundle.val, bundle.test):
        _assert_colors_match_labels(split, bundle.info.class_names)
    assert sorted(bundle.train.labels.tolist() + bundle.val.labels.tolist() + bundle.test.labels.tolist()) \
        == [0] * 5 + [1] * 5 + [2] * 5


def test_imagefolder_train_test_layout(tmp_path):
    write_images(tmp_path / "train", per_class=4)
    write_images(tmp_path / "test", per_class=2)
    bundle = load_data(DataSection(dataset="imagefolder", root=tmp_path, image_size=16), seed=0)
    assert bundle.info.class_names == ("blue", "green", "red")
    assert sorted(bundle.test.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert len(bundle.train) + len(bundle.val) == 12
    _assert_colors_match_labels(bundle.test, bundle.info.class_names)
    _assert_colors_match_labels(bundle.train, bundle.info.class_names)


def test_imagefolder_corrupt_image_is_named(tmp_path):
    write_images(tmp_path, per_class=3)
    broken = tmp_path / "green" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    with pytest.raises(InputError) as info:
        load_data(DataSection(dataset="imagefolder", root=tmp_path, image_size=16), seed=0)
    assert str(broken) in str(info.value)


def test_imagefolder_truncated_image_is_named(tmp_path):
    write_images(tmp_path, per_class=3)
    image = tmp_path / "red" / "1.png"
    image.write_bytes(image.read_bytes()[:40])
    with pytest.raises(InputError) as info:
        load_data(DataSection(dataset="imagefolder", root=tmp_path, image_size=16), seed=0)
    assert str(image) in str(info.value)


def test_imagefolder_needs_two_classes(tmp_path):
    write_images(tmp_path, per_class=3, classes={"only": (1, 2, 3)})
    with pytest.raises(InputError, match="found 1 class folder.*at least 2"):
        check_data(DataSection(dataset="imagefolder", root=tmp_path))


def test_imagefolder_missing_root_says_what_to_put_there(tmp_path):
    with pytest.raises(InputError) as info:
        check_data(DataSection(dataset="imagefolder", root=tmp_path / "absent"))
    assert str(tmp_path / "absent") in info.value.message and "<class>" in info.value.hint


def test_imagefolder_test_classes_must_exist_in_train(tmp_path):
    write_images(tmp_path / "train", per_class=2)
    write_images(tmp_path / "test", per_class=1, classes={"blue": (0, 0, 255), "purple": (90, 0, 90)})
    with pytest.raises(InputError, match="purple"):
        load_data(DataSection(dataset="imagefolder", root=tmp_path, image_size=16), seed=0)


def test_digits_splits_keep_each_class_share(digits_seed0):
    from sklearn.datasets import load_digits

    counts = np.bincount(load_digits().target, minlength=10)
    for split in (digits_seed0.train, digits_seed0.val, digits_seed0.test):
        found = np.bincount(split.labels.numpy(), minlength=10)
        assert np.abs(found - counts * len(split) / counts.sum()).max() < 1.0 + 1e-9


# --------------------------------------------------------------------------- image folders and links


@pytest.fixture
def dataset_log(caplog):
    """Warnings from the dataset module, whatever the CLI's logging setup did to propagation."""
    logger = logging.getLogger("nfcompile.data.datasets")
    logger.addHandler(caplog.handler)
    with caplog.at_level(logging.WARNING, logger="nfcompile.data.datasets"):
        yield caplog
    logger.removeHandler(caplog.handler)


def _decoded_files(bundle: DataBundle) -> int:
    return len(bundle.train) + len(bundle.val) + len(bundle.test)


def test_imagefolder_symlink_loop_lists_each_file_once(tmp_path, dataset_log):
    write_images(tmp_path / "photos", per_class=4)
    (tmp_path / "photos" / "red" / "again").symlink_to(tmp_path / "photos" / "red")  # a loop
    (tmp_path / "photos" / "blue" / "up").symlink_to(tmp_path / "photos")  # a loop through the root
    (tmp_path / "photos" / "green" / "reds").symlink_to(tmp_path / "photos" / "red")  # another class
    bundle = load_data(DataSection(dataset="imagefolder", root=tmp_path / "photos", image_size=16), seed=0)
    assert _decoded_files(bundle) == 12
    for split in (bundle.train, bundle.val, bundle.test):  # no image listed under another class
        _assert_colors_match_labels(split, bundle.info.class_names)
    assert "skipped 3 link(s) to folders inside or above" in dataset_log.text
    assert "duplicate" not in dataset_log.text  # nothing was listed twice


def test_imagefolder_loop_outside_the_dataset_ends(tmp_path):
    write_images(tmp_path / "elsewhere", per_class=3)
    (tmp_path / "elsewhere" / "red" / "loop").symlink_to(tmp_path / "elsewhere" / "red")
    (tmp_path / "photos").mkdir()
    for name in COLORS:
        (tmp_path / "photos" / name).symlink_to(tmp_path / "elsewhere" / name)
    bundle = load_data(DataSection(dataset="imagefolder", root=tmp_path / "photos", image_size=16), seed=0)
    assert _decoded_files(bundle) == 9


def test_imagefolder_two_links_to_one_file_keep_one(tmp_path, dataset_log):
    write_images(tmp_path / "photos", per_class=4)
    (tmp_path / "photos" / "red" / "copy.png").symlink_to(tmp_path / "photos" / "red" / "0.png")
    (tmp_path / "photos" / "red" / "copy2.png").symlink_to(tmp_path / "photos" / "red" / "0.png")
    bundle = load_data(DataSection(dataset="imagefolder", root=tmp_path / "photos", image_size=16), seed=0)
    assert _decoded_files(bundle) == 12
    assert "dropped 2 duplicate image file(s)" in dataset_log.text


def test_imagefolder_file_linked_into_train_and_test_stays_in_test_only(tmp_path, dataset_log):
    write_images(tmp_path / "train", per_class=4)
    write_images(tmp_path / "test", per_class=2)
    (tmp_path / "train" / "green" / "leak.png").symlink_to(tmp_path / "test" / "green" / "1.png")
    (tmp_path / "train" / "red" / "tests").symlink_to(tmp_path / "test" / "red")  # a folder link: not followed
    bundle = load_data(DataSection(dataset="imagefolder", root=tmp_path, image_size=16), seed=0)
    assert len(bundle.test) == 6 and len(bundle.train) + len(bundle.val) == 12
    assert f"{tmp_path / 'train'}: dropped 1 duplicate" in dataset_log.text


def test_imagefolder_class_without_images_is_named(tmp_path):
    write_images(tmp_path, per_class=2)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match="class folder.*empty.*hold no image files"):
        load_data(DataSection(dataset="imagefolder", root=tmp_path, image_size=16), seed=0)
