"""Datasets: the bundled digits, the MNIST family (IDX files), CIFAR-10/100 and image folders.

Every dataset becomes three `ImageSet`s (train, val, test) of uint8 RGB images already resized to
the recipe's input size, plus `DatasetInfo` (class names, normalization) for the manifest.
A dataset that is not where the recipe says raises `InputError` naming where it looked and what
belongs there.

Splits carved from one pool (a test split out of a dataset without one, the validation split out of
every training set, the `max_*_samples` subsets) are stratified: each class keeps its share, and
which images go where follows from the seed alone.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from nfcompile.core.log import get_logger, progress_bar
from nfcompile.core.registry import Registry
from nfcompile.data.idx import idx_file, read_idx_pair
from nfcompile.data.preprocess import Preprocessing, decode_image, resize_uint8, to_rgb3
from nfcompile.errors import InputError, RecipeError
from nfcompile.recipe.schema import DataSection

log = get_logger(__name__)


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor  # uint8, (N, 3, S, S)
    labels: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[indices], self.labels[indices])


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    source: str  # where it was read from

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "class_names": list(self.class_names), "source": self.source,
                "num_classes": self.num_classes, "preprocessing": self.preprocessing.to_dict()}


@dataclass(frozen=True)
class DataBundle:
    train: ImageSet
    val: ImageSet  # what exits are scored and selected on
    test: ImageSet
    info: DatasetInfo
    # The part of `val` evaluated after every training epoch (`data.monitor_samples`); None: all of it.
    # Selection is only as sure as its split is large, and every exit's per-epoch evaluation costs time in
    # proportion: a small training set (the benchmarks' 1,500-2,000 images) makes evaluation a large share.
    monitor_subset: ImageSet | None = None

    @property
    def monitor(self) -> ImageSet:
        return self.val if self.monitor_subset is None else self.monitor_subset

    @property
    def preprocessing(self) -> Preprocessing:
        return self.info.preprocessing


@dataclass(frozen=True)
class _Raw:
    """What a dataset reader returns before splitting and normalization."""

    train_images: torch.Tensor  # uint8 (N,3,S,S)
    train_labels: torch.Tensor
    test_images: torch.Tensor | None  # None: carve the test split out of train
    test_labels: torch.Tensor | None
    class_names: tuple[str, ...]
    mean: tuple[float, float, float] | None  # None: measure on the training split
    std: tuple[float, float, float] | None
    source: str
    color: str = "rgb"  # of the source images: "grayscale" ones are fed as three equal channels


_Reader = Callable[[DataSection], _Raw]
_Checker = Callable[[DataSection], None]
_REGISTRY: Registry[tuple[_Reader, _Checker]] = Registry("dataset", unknown=lambda name, known: RecipeError(
    f"unknown dataset {name!r}; choose one of {', '.join(sorted(known))}", field="data.dataset"))


def register_dataset(name: str, checker: _Checker) -> Callable[[_Reader], _Reader]:
    def wrap(reader: _Reader) -> _Reader:
        _REGISTRY.register(name, (reader, checker))
        return reader
    return wrap


def list_datasets() -> list[str]:
    return sorted(_REGISTRY.names())


def _entry(section: DataSection) -> tuple[_Reader, _Checker]:
    return _REGISTRY.get(section.dataset)


@contextlib.contextmanager
def _reading(section: DataSection) -> Iterator[None]:
    """What the readers do not name themselves (a root name too long, a folder we may not enter)."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or section.root
        raise InputError(f"data.root: cannot read {where}: {exc.strerror or exc}") from None


def check_data(section: DataSection) -> None:
    """Fail fast, before any training, when the dataset is not where the recipe says."""
    with _reading(section):
        _entry(section)[1](section)


def load_data(section: DataSection, seed: int) -> DataBundle:
    reader, checker = _entry(section)
    with _reading(section):
        checker(section)
        raw = reader(section)
    generator = torch.Generator().manual_seed(seed)
    source = ImageSet(raw.train_images, raw.train_labels)
    train_idx, val_idx, test_idx = _split_indices(raw.train_labels, section, generator,
                                                  carve_test=raw.test_images is None)
    train, val = source.subset(train_idx), source.subset(val_idx)
    test = source.subset(test_idx) if test_idx is not None else ImageSet(raw.test_images, raw.test_labels)
    train = _limit(train, section.max_train_samples, generator)
    val = _limit(val, section.max_eval_samples, generator)
    test = _limit(test, section.max_eval_samples, generator)
    monitor = _limit(val, section.monitor_samples, generator)
    if len(train) < 2:
        raise InputError(f"data.dataset {section.dataset!r}: only {len(train)} training sample(s) after "
                         "splitting; add data or lower data.val_fraction/test_fraction")
    mean, std = raw.mean, raw.std
    if mean is None or std is None:
        mean, std = _channel_stats(train.images)
    mean = tuple(section.mean) if section.mean is not None else mean
    std = tuple(section.std) if section.std is not None else std
    preprocessing = Preprocessing(image_size=section.image_size, mean=mean, std=std, color=raw.color)
    info = DatasetInfo(section.dataset, raw.class_names, preprocessing, raw.source)
    log.info("data %s: %d train / %d val (%d evaluated every epoch) / %d test images, %d classes, %dx%d",
             section.dataset, len(train), len(val), len(monitor), len(test), info.num_classes,
             section.image_size, section.image_size)
    return DataBundle(train, val, test, info, monitor_subset=monitor if monitor is not val else None)


def _split_indices(labels: torch.Tensor, section: DataSection, generator: torch.Generator, *,
                   carve_test: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Positions of train, val and (when the dataset has no test set of its own) test in ``labels``."""
    n = len(labels)
    pool, test = torch.arange(n), None
    if carve_test:
        test, pool = stratified_take(labels, max(1, round(n * section.test_fraction)), generator)
    val, train = stratified_take(labels[pool], max(1, round(n * section.val_fraction)), generator)
    return pool[train], pool[val], test


def stratified_take(labels: torch.Tensor, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of ``count`` items where each class keeps its share, and the positions left over.

    Each class gets its share of ``count`` rounded down; the items still missing go to the classes
    with the largest remainders (ties: the lower class). Within a class the items are drawn at
    random; both results come in one random order (never grouped by class).
    """
    count = min(count, len(labels))
    order = torch.randperm(len(labels), generator=generator)
    if count == 0:
        return order[:0], order
    classes, sizes = torch.unique(labels, return_counts=True)
    quotas = _largest_remainder(sizes, count)
    shuffled = labels[order]
    taken = torch.zeros(len(labels), dtype=torch.bool)
    for cls, quota in zip(classes.tolist(), quotas.tolist()):
        taken[order[shuffled == cls][:quota]] = True
    return order[taken[order]], order[~taken[order]]


def _largest_remainder(sizes: torch.Tensor, count: int) -> torch.Tensor:
    exact = sizes.double() * count / int(sizes.sum())
    quotas = exact.floor().long()
    missing = count - int(quotas.sum())
    by_remainder = torch.argsort(exact - quotas, descending=True, stable=True)
    quotas[by_remainder[:missing]] += 1
    return quotas


def _limit(images: ImageSet, limit: int | None, generator: torch.Generator) -> ImageSet:
    if limit is None or len(images) <= limit:
        return images
    keep, _ = stratified_take(images.labels, limit, generator)
    return images.subset(keep.sort().values)


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (sample) std of pixel / 255, from each channel's histogram of the 256
    levels: exact, and without a float copy of the whole training set."""
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = torch.bincount(images[:, channel].reshape(-1), minlength=256).double()
        total = counts.sum()
        mean = (counts * levels).sum() / total
        variance = (counts * (levels - mean) ** 2).sum() / (total - 1).clamp_min(1)
        means.append(round(float(mean), 4))
        stds.append(round(max(float(variance.sqrt()), 1e-3), 4))
    return tuple(means), tuple(stds)


# --------------------------------------------------------------------------- digits


def _check_digits(section: DataSection) -> None:
    if section.root is not None:
        raise RecipeError("the digits dataset is bundled with scikit-learn; remove data.root",
                          field="data.root")


@register_dataset("digits", _check_digits)
def _read_digits(section: DataSection) -> _Raw:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 8x8 images with 17 grey levels (0..16), scaled to the full uint8 range before resizing.
    images = torch.from_numpy((digits.images * (255.0 / 16.0)).round().astype(np.uint8)).unsqueeze(1)
    images = to_rgb3(resize_uint8(images, section.image_size))
    labels = torch.from_numpy(digits.target.astype(np.int64))
    return _Raw(images, labels, None, None, tuple(str(i) for i in range(10)), None, None,
                "sklearn.datasets.load_digits (bundled)", color="grayscale")


# --------------------------------------------------------------------------- MNIST family (IDX files)


@dataclass(frozen=True)
class _IdxLayout:
    label: str
    class_names: tuple[str, ...]
    default_root: Path | None  # where a null data.root looks
    get_it: str  # how to put the files there


IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist

_IDX = {
    "fashion_mnist": _IdxLayout(
        "Fashion-MNIST", ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                          "Bag", "Ankle boot"), FASHION_MNIST_ROOT,
        f"apt-get install -y dataset-fashion-mnist (it installs them in {FASHION_MNIST_ROOT}), or set data.root "
        "to a folder holding the four files from https://github.com/zalandoresearch/fashion-mnist"),
    "mnist": _IdxLayout("MNIST", tuple(str(i) for i in range(10)), None,
                        "put the four MNIST IDX files (gzipped or not) there"),
    "kmnist": _IdxLayout("KMNIST", ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"), None,
                         "put the four KMNIST IDX files from https://github.com/rois-codh/kmnist "
                         "(gzipped or not) there"),
}


def _idx_root(section: DataSection) -> Path:
    layout = _IDX[section.dataset]
    if section.root is not None:
        return Path(section.root)
    if layout.default_root is None:
        raise RecipeError(f"{section.dataset} needs data.root: the folder holding the {layout.label} IDX files "
                          f"({', '.join(name for pair in IDX_FILES.values() for name in pair)}, "
                          "gzipped or not)", field="data.root")
    return layout.default_root


def _check_idx(section: DataSection) -> None:
    root, layout = _idx_root(section), _IDX[section.dataset]
    names = [name for pair in IDX_FILES.values() for name in pair]
    missing = [name for name in names if idx_file(root, name) is None]
    if missing:
        raise InputError(f"{layout.label} not found: looked for {', '.join(f'{m}[.gz]' for m in missing)} in {root}",
                         hint=layout.get_it)


def _idx_split(root: Path, split: str, layout: _IdxLayout, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images_name, labels_name = IDX_FILES[split]
    images, labels = read_idx_pair(idx_file(root, images_name), idx_file(root, labels_name),
                                   len(layout.class_names))
    grey = torch.from_numpy(images).unsqueeze(1)
    return to_rgb3(resize_uint8(grey, size)), torch.from_numpy(labels.astype(np.int64))


def _read_idx(section: DataSection) -> _Raw:
    root, layout = _idx_root(section), _IDX[section.dataset]
    train_images, train_labels = _idx_split(root, "train", layout, section.image_size)
    test_images, test_labels = _idx_split(root, "test", layout, section.image_size)
    return _Raw(train_images, train_labels, test_images, test_labels, layout.class_names, None, None,
                str(root), color="grayscale")


register_dataset("fashion_mnist", _check_idx)(_read_idx)
register_dataset("mnist", _check_idx)(_read_idx)
register_dataset("kmnist", _check_idx)(_read_idx)


# --------------------------------------------------------------------------- CIFAR


@dataclass(frozen=True)
class _CifarLayout:
    torchvision_class: str
    label_key: str
    names_key: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_CIFAR = {
    "cifar10": _CifarLayout("CIFAR10", "labels", "label_names",
                            (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": _CifarLayout("CIFAR100", "fine_labels", "fine_label_names",
                             (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _cifar_class(name: str):
    import torchvision.datasets

    return getattr(torchvision.datasets, _CIFAR[name].torchvision_class)


def _cifar_files(section: DataSection) -> tuple[Path, list[Path], list[Path], Path]:
    cls = _cifar_class(section.dataset)
    folder = Path(section.root or "") / cls.base_folder
    train = [folder / name for name, _ in cls.train_list]
    test = [folder / name for name, _ in cls.test_list]
    return folder, train, test, folder / cls.meta["filename"]


def _check_cifar(section: DataSection) -> None:
    label = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[section.dataset]
    if section.root is None:
        raise RecipeError(f"{section.dataset} needs data.root: the folder that holds (or will hold) "
                          f"the extracted {label} python batches", field="data.root")
    folder, train, test, meta = _cifar_files(section)
    missing = [p for p in [*train, *test, meta] if not p.is_file()]
    if not missing:
        return
    if section.download:
        cls = _cifar_class(section.dataset)
        log.info("downloading %s into %s", label, section.root)
        try:
            cls(root=str(section.root), train=True, download=True)
        except Exception as exc:  # network errors come in many types; the message is what helps
            raise InputError(f"data.download: could not download {label} into {section.root}: {exc}",
                             hint="on a machine without internet, put the extracted files there by hand") from None
        return
    archive = _cifar_class(section.dataset).filename
    raise InputError(
        f"{label} not found: looked for {', '.join(p.name for p in missing[:4])}"
        f"{' …' if len(missing) > 4 else ''} in {folder}",
        hint=f"download {archive} from https://www.cs.toronto.edu/~kriz/cifar.html and extract it into "
        f"{Path(section.root)} (it creates {folder.name}/), or set data.download: true where there is internet")


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR's python batches are pickles; read them allowing only what real batches contain.

    torchvision unpickles these files with plain `pickle.load`, which runs any code a crafted
    file holds. The batches need only builtins, bytes and NumPy arrays, so nothing else loads.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        # pickle protocol 5 (Python 3.14's default) stores arrays as buffers read by _frombuffer.
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"), ("builtins", "bytearray"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR batch")


def _read_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            entry = _CifarUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError) as exc:
        raise InputError(f"{path}: not a readable CIFAR python batch ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(entry, dict):
        raise InputError(f"{path}: not a CIFAR batch (holds {type(entry).__name__}, expected a dict)")
    return entry


def _cifar_split(paths: list[Path], layout: _CifarLayout, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for path in paths:
        entry = _read_batch(path)
        if "data" not in entry or layout.label_key not in entry:
            raise InputError(f"{path}: CIFAR batch lacks 'data' or '{layout.label_key}'")
        data = np.asarray(entry["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(entry[layout.label_key]) != data.shape[0]:
            raise InputError(f"{path}: CIFAR batch has data of shape {data.shape} and "
                             f"{len(entry[layout.label_key])} labels; expected (N, 3072) and N labels")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.as_tensor(list(entry[layout.label_key]), dtype=torch.int64))
    return resize_uint8(torch.cat(images), size), torch.cat(labels)


def _read_cifar(section: DataSection) -> _Raw:
    layout = _CIFAR[section.dataset]
    folder, train_files, test_files, meta_file = _cifar_files(section)
    meta = _read_batch(meta_file)
    if layout.names_key not in meta:
        raise InputError(f"{meta_file}: lacks '{layout.names_key}'")
    names = tuple(str(n) for n in meta[layout.names_key])
    train_images, train_labels = _cifar_split(train_files, layout, section.image_size)
    test_images, test_labels = _cifar_split(test_files, layout, section.image_size)
    for labels, files in ((train_labels, train_files), (test_labels, test_files)):
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            raise InputError(f"{files[0].parent}: labels outside 0..{len(names) - 1}")
    return _Raw(train_images, train_labels, test_images, test_labels, names, layout.mean, layout.std,
                str(folder))


register_dataset("cifar10", _check_cifar)(_read_cifar)
register_dataset("cifar100", _check_cifar)(_read_cifar)


# --------------------------------------------------------------------------- image folder


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def _imagefolder_roots(section: DataSection) -> tuple[Path, Path | None]:
    root = Path(section.root)
    if (root / "train").is_dir():
        for name in ("test", "val"):
            if (root / name).is_dir():
                return root / "train", root / name
        return root / "train", None
    return root, None


def _check_imagefolder(section: DataSection) -> None:
    layout = ("ROOT/<class>/<image> or ROOT/train/<class>/<image> (with an optional "
              "ROOT/test/ or ROOT/val/ of the same classes)")
    if section.root is None:
        raise RecipeError(f"imagefolder needs data.root laid out as {layout}", field="data.root")
    root = Path(section.root)
    if not root.is_dir():
        raise InputError(f"image folder not found: {root}", hint=f"put the images there as {layout}")
    train_root, _ = _imagefolder_roots(section)
    classes = [p for p in sorted(train_root.iterdir()) if p.is_dir()]
    if len(classes) < 2:
        raise InputError(f"{train_root}: found {len(classes)} class folder(s), need at least 2",
                         hint=f"lay the images out as {layout}")


def _scan(folder: Path, classes: list[str], seen: set[tuple[int, int]], tree: Path) -> list[tuple[Path, int]]:
    """(image, label) pairs under ``folder/<class>/``, each real file once: a file already in ``seen``
    (same device and inode: a second symlink or hard link to it, or one in the test split) is dropped.
    Links to folders are followed only out of ``tree`` (the dataset root): one back into it or above it
    would loop, or list images under a second class."""
    items, empty, dropped, skipped = [], [], 0, 0
    for label, name in enumerate(classes):
        listed, skipped_here = _walk_files(folder / name, Path(os.path.realpath(tree)))
        skipped += skipped_here
        if not listed and (folder / name).is_dir():
            empty.append(name)
        for path in listed:
            identity = _file_identity(path)
            if identity in seen:
                dropped += 1
                continue
            seen.add(identity)
            items.append((path, label))
    if empty:
        raise InputError(f"{folder}: class folder(s) {', '.join(empty)} hold no image files "
                         f"(looked for {', '.join(IMAGE_SUFFIXES)})")
    if skipped:
        log.warning("%s: skipped %d link(s) to folders inside or above %s (a loop, or a second path to "
                    "the same images)", folder, skipped, tree)
    if dropped:
        log.warning("%s: dropped %d duplicate image file(s): the same file reached again through a link, "
                    "or already in the test split", folder, dropped)
    return items


def _walk_files(top: Path, tree: Path) -> tuple[list[Path], int]:
    """Image files under ``top``, sorted, and how many links to folders were not followed. Every folder
    is entered once, so a loop through folders outside ``tree`` ends where it closes too."""
    files, skipped, entered = [], 0, set()
    for where, dirs, names in os.walk(top, followlinks=True, onerror=_raise):
        info = os.stat(where)
        if (info.st_dev, info.st_ino) in entered:
            dirs.clear()
            skipped += 1
            continue
        entered.add((info.st_dev, info.st_ino))
        followed = sorted(d for d in dirs if not _links_into(Path(where) / d, tree))
        skipped += len(dirs) - len(followed)
        dirs[:] = followed
        files.extend(Path(where) / name for name in sorted(names) if name.lower().endswith(IMAGE_SUFFIXES))
    return files, skipped


def _links_into(path: Path, tree: Path) -> bool:
    """Whether ``path`` is a link to ``tree``, to a folder inside it, or to one above it."""
    if not path.is_symlink():
        return False
    target = Path(os.path.realpath(path))
    return target == tree or tree in target.parents or target in tree.parents


def _raise(error: OSError) -> None:
    raise error  # os.walk would skip a folder it cannot read without a word


def _file_identity(path: Path) -> tuple[int, int]:
    """(device, inode) of the file behind ``path`` (links followed)."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):  # a pipe or device named like an image would block the decoder
        raise InputError(f"{path}: not a regular file")
    return info.st_dev, info.st_ino


def _decode_all(items: list[tuple[Path, int]], size: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.empty((len(items), 3, size, size), dtype=torch.uint8)
    with progress_bar(f"decode {what}", len(items)) as advance:
        for i, (path, _) in enumerate(items):
            images[i] = decode_image(path, size)
            advance()
    return images, torch.tensor([label for _, label in items], dtype=torch.int64)


def _read_imagefolder(section: DataSection) -> _Raw:
    from torchvision.datasets.folder import find_classes

    train_root, test_root = _imagefolder_roots(section)
    classes, _ = find_classes(str(train_root))
    seen: set[tuple[int, int]] = set()  # files listed so far: one in the test folder stays there only
    test_items = None
    if test_root is not None:
        test_classes, _ = find_classes(str(test_root))
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise InputError(f"{test_root}: class folders {unknown} are not in {train_root}")
        test_items = _scan(test_root, classes, seen, Path(section.root))
    train_items = _scan(train_root, classes, seen, Path(section.root))
    train_images, train_labels = _decode_all(train_items, section.image_size, "train images")
    test_images = test_labels = None
    if test_items is not None:
        test_images, test_labels = _decode_all(test_items, section.image_size, "test images")
    return _Raw(train_images, train_labels, test_images, test_labels, tuple(classes), None, None,
                str(section.root))


register_dataset("imagefolder", _check_imagefolder)(_read_imagefolder)
