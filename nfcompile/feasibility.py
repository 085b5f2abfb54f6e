"""Can this recipe run here? The checks the schema cannot make, run by `check` and by every command
that starts work (through `api.load_checked_recipe`), before any data is read or model trained.

The schema judges each value alone; these judge values against each other, the dataset, the
architecture, the exporter and this machine, each failure a `RecipeError` naming the field.
"""

from __future__ import annotations

from nfcompile.errors import InputError, RecipeError
from nfcompile.recipe import Recipe

# Classes of the datasets whose class count does not depend on the files (imagefolder counts folders).
FIXED_CLASS_COUNTS = {"digits": 10, "mnist": 10, "fashion_mnist": 10, "kmnist": 10, "cifar10": 10, "cifar100": 100}


def check_feasible(recipe: Recipe) -> None:
    """Raise a `RecipeError` (field named) for the first setting this recipe cannot run with."""
    check_device(recipe.device)
    check_exporter_opset(recipe.export.exporter, recipe.export.opset)
    check_num_classes(recipe)


def check_device(name: str) -> None:
    from nfcompile.core.device import resolve_device

    try:
        resolve_device(name)
    except InputError as exc:
        raise RecipeError(exc.message, field="device", hint=exc.hint or "use auto, cpu or cuda[:N]") from None


def exporter_opsets(exporter: str) -> tuple[int, int]:
    """The opsets ``exporter`` writes as asked (lowest, highest). torch keeps them in private modules:
    read there when present, else the values of torch 2.9-2.14."""
    try:
        if exporter == "dynamo":
            from torch.onnx._internal.exporter._constants import TORCHLIB_OPSET as low
            return int(low), 23
        from torch.onnx._constants import ONNX_MIN_OPSET as low, ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as high
        return int(low), int(high)
    except ImportError:
        return (18, 23) if exporter == "dynamo" else (7, 20)


def check_exporter_opset(exporter: str, opset: int) -> None:
    low, high = exporter_opsets(exporter)
    if not low <= opset <= high:
        other = "torchscript" if exporter == "dynamo" else "dynamo"
        raise RecipeError(f"the {exporter} exporter writes opsets {low} to {high}, not {opset}", field="export.opset",
                          hint=f"choose an opset from {low} to {high}, or export.exporter: {other}")


def dataset_classes(recipe: Recipe) -> int | None:
    """How many classes the dataset has, known without reading it (None: not known before loading)."""
    if recipe.data.dataset in FIXED_CLASS_COUNTS:
        return FIXED_CLASS_COUNTS[recipe.data.dataset]
    if recipe.data.dataset == "imagefolder" and recipe.data.root is not None:
        from torchvision.datasets.folder import find_classes

        from nfcompile.data.datasets import _imagefolder_roots  # the one place that knows the layout

        try:
            return len(find_classes(str(_imagefolder_roots(recipe.data)[0]))[0])
        except (OSError, FileNotFoundError):
            return None  # check_data names what is wrong with the folder
    return None


def check_num_classes(recipe: Recipe) -> None:
    wanted = recipe.model.num_classes
    found = dataset_classes(recipe) if wanted is not None else None
    if wanted is not None and found is not None and wanted < found:
        raise RecipeError(f"{wanted} is fewer than the {found} classes of data.dataset {recipe.data.dataset}",
                          field="model.num_classes", hint="leave model.num_classes null to take the dataset's")


def check_batchnorm_maps(net, image_size: int) -> None:
    """Refuse an input size at which a unit's BatchNorm normalizes a 1x1 map: with one value per
    channel at batch 1 (a planned batch, or the last batch of an epoch) training stops with an error."""
    import torch
    from torch import nn

    seen: list[tuple[str, tuple[int, ...]]] = []
    hooks = [module.register_forward_pre_hook(
        lambda m, args, where=f"{unit_name} ({name or 'unit'})": seen.append((where, tuple(args[0].shape))))
        for unit_name, unit in zip(net.unit_names, net.units)
        for name, module in unit.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    modes = [(module, module.training) for module in net.modules()]
    net.eval()
    try:
        with torch.no_grad():
            net.forward_features(torch.zeros(1, 3, image_size, image_size))
    finally:
        for module, training in modes:
            module.training = training
        for hook in hooks:
            hook.remove()
    for where, shape in seen:
        if len(shape) == 4 and shape[2] * shape[3] == 1:
            raise RecipeError(f"{image_size}x{image_size} inputs leave a 1x1 map at the BatchNorm of unit {where}: "
                              "it cannot train on one value per channel (batch 1)", field="data.image_size",
                              hint="use a larger data.image_size, or model.small_input: true")
