"""Gradient filtering (Yang, Li & Marculescu, CVPR 2023): fine-tune the last N convs cheaply.

The output gradient of a filtered conv is averaged over R x R patches, so it has one value per
patch. With that structure the backward pass needs only coarse tensors, which is all the forward
pass keeps:

- forward saves ``x_mean``: the input averaged over the (R*s) x (R*s) window that each output patch
  reads (s: stride); backward sums the kernel over its spatial taps, ``w_sum`` (C_out, C_in/groups),
  from the weight itself (a parameter, resident anyway; the paper stores the sum instead, which on
  the 2x2 maps of a 16x16 ResNet-18's last stage outweighs the pooled input);
- weight gradient: ``gW[o, i, :, :] = sum_{n, patch} gy_sum[n, o, patch] * x_mean[n, i, patch]``,
  the same value for every tap, as in the paper (the kernel's spatial extent is ignored);
- input gradient: ``gx[n, i, window] = sum_o w_sum[o, i] * gy_mean[n, o, patch] / (s_h * s_w)``,
  one value spread over each input window;
- bias gradient: exact, the sum of the unfiltered output gradient.

For 1x1 convolutions at stride 1 these formulas are exact whenever the output gradient is already
constant over each patch. For k x k kernels the paper's method also drops the kernel's spatial
structure (every tap gets the same weight gradient, and the input gradient ignores which taps reach
which pixel), so it stays an approximation even then.

Stride (the paper derives stride 1): an output patch of R x R reads an input window of
(R*s) x (R*s). The window's mean stands for the R x R strided samples the patch actually reads, so
``gy_sum * x_mean`` estimates ``sum gy * x`` over the patch. For the input gradient, each input
pixel gets the window-average of what the exact gradient would spread over the window: with a
patch-constant gy, the window receives ``R^2 * w_sum * gy_mean`` in total over its (R*s)^2 pixels,
hence the ``1 / s^2``. (The authors' reference code pairs patch-mean gradients with window-sum
inputs and broadcasts without that factor, so at strided layers both its gradients come out s^2
times larger; at stride 1 the two agree.) Windows are aligned with the outputs'
receptive-field centres: output row i is centred on input row ``i*s + (k-1)*d//2 - p``, so for
"same" padding the windows start at pixel 0; rows outside every window get no gradient.

Saved activation memory falls by about (R*s)^2 per filtered layer; `measure_layer_memory` measures
it from the tensors autograd actually saves.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nfcompile.core.log import get_logger
from nfcompile.core.repro import derived_seed, seed_everything
from nfcompile.core.results import EpochRecord, Result
from nfcompile.data.sources import ImageInput, unaugmented
from nfcompile.learning.parallel import data_parallel, global_batch, rank_generators, shard, synced_evaluate
from nfcompile.learning import fit, lr_schedule, make_optimizer, scaled_lr, set_lr, top1_accuracy
from nfcompile.data.batches import Augment, image_batches
from nfcompile.data.datasets import DataBundle
from nfcompile.errors import RecipeError
from nfcompile.recipe.schema import TrainSection

log = get_logger(__name__)


# --------------------------------------------------------------------------- the filtered op


@dataclass(frozen=True)
class _Window:
    """Where the input windows of one spatial axis lie: ``count`` windows of ``size`` pixels from
    ``start`` (which may be negative or run past the input's ``extent``)."""

    start: int
    size: int
    count: int
    extent: int

    @property
    def pad(self) -> tuple[int, int]:
        # F.pad amounts (before, after) that make the input exactly cover the windows; negative crops.
        return -self.start, self.start + self.size * self.count - self.extent


def _windows(x_extent: int, y_extent: int, kernel: int, stride: int, padding: int, dilation: int,
             patch: int) -> _Window:
    start = (kernel - 1) * dilation // 2 - padding
    return _Window(start, patch * stride, math.ceil(y_extent / patch), x_extent)


def _window_means(x: torch.Tensor, rows: _Window, cols: _Window) -> torch.Tensor:
    """Mean of ``x`` over every input window, counting only real (not padded) pixels."""
    padded = F.pad(x, (*cols.pad, *rows.pad))
    kernel = (rows.size, cols.size)
    sums = F.avg_pool2d(padded, kernel, kernel, divisor_override=1)
    ones = F.pad(torch.ones((1, 1, rows.extent, cols.extent), dtype=x.dtype, device=x.device),
                 (*cols.pad, *rows.pad))
    counts = F.avg_pool2d(ones, kernel, kernel, divisor_override=1)
    return sums / counts.clamp_min(1.0)


def _spread(coarse: torch.Tensor, rows: _Window, cols: _Window) -> torch.Tensor:
    """Inverse of the windowing: every pixel of a window gets the window's value."""
    fine = coarse.repeat_interleave(rows.size, dim=2).repeat_interleave(cols.size, dim=3)
    return F.pad(fine, (-cols.pad[0], -cols.pad[1], -rows.pad[0], -rows.pad[1]))


class FilteredConv2dFunction(torch.autograd.Function):
    """conv2d whose backward pass uses R x R patch-averaged output gradients (see the module doc)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, patch):
        y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        kernel = weight.shape[-2:]
        rows = _windows(x.shape[2], y.shape[2], kernel[0], stride[0], padding[0], dilation[0], patch)
        cols = _windows(x.shape[3], y.shape[3], kernel[1], stride[1], padding[1], dilation[1], patch)
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # Only the pooled input is kept (and only when the weight gradient needs it). The kernel sum
        # is taken in backward from the weight, which stays resident anyway: storing the sum would
        # add C_out x C_in floats per layer, more than the pooled input itself on small late maps.
        x_mean = _window_means(x, rows, cols) if need_w else None
        ctx.save_for_backward(x_mean, weight if need_x else None)
        ctx.geometry = (rows, cols, tuple(stride), groups, patch, tuple(weight.shape))
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x_mean, weight = ctx.saved_tensors
        rows, cols, stride, groups, patch, weight_shape = ctx.geometry
        c_out, c_in_group = weight_shape[:2]
        n = grad_y.shape[0]
        gy_sum = F.avg_pool2d(grad_y, patch, patch, ceil_mode=True, divisor_override=1)
        grid = gy_sum.shape[-2:]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            per_group = gy_sum.reshape(n, groups, c_out // groups, *grid)
            x_groups = x_mean.reshape(n, groups, c_in_group, *grid)
            coarse = torch.einsum("ngoab,ngiab->goi", per_group, x_groups).reshape(c_out, c_in_group)
            grad_w = coarse[:, :, None, None].expand(weight_shape).contiguous()
        if ctx.needs_input_grad[0]:
            ones = torch.ones((1, 1, *grad_y.shape[-2:]), dtype=grad_y.dtype, device=grad_y.device)
            counts = F.avg_pool2d(ones, patch, patch, ceil_mode=True, divisor_override=1)
            gy_mean = (gy_sum / counts).reshape(n, groups, c_out // groups, *grid)
            kernel_sums = weight.sum(dim=(2, 3)).reshape(groups, c_out // groups, c_in_group)
            coarse = torch.einsum("ngoab,goi->ngiab", gy_mean, kernel_sums)
            coarse = coarse.reshape(n, groups * c_in_group, *grid) / (stride[0] * stride[1])
            grad_x = _spread(coarse, rows, cols)
        if ctx.needs_input_grad[2]:
            grad_b = grad_y.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None, None, None


def _explicit_padding(conv: nn.Conv2d, name: str) -> tuple[int, int]:
    if conv.padding_mode != "zeros":
        raise RecipeError(f"conv layer {name} pads with {conv.padding_mode!r}; gradient filtering "
                          "handles zero padding only", field="train.gradient_filter.layers",
                          hint="filter fewer layers so that this one trains with plain backprop")
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        totals = [d * (k - 1) for k, d in zip(conv.kernel_size, conv.dilation)]
        if any(t % 2 for t in totals):
            raise RecipeError(f"conv layer {name} uses asymmetric 'same' padding, which gradient "
                              "filtering does not handle", field="train.gradient_filter.layers",
                              hint="filter fewer layers so that this one trains with plain backprop")
        return (totals[0] // 2, totals[1] // 2)
    return tuple(conv.padding)


class FilteredConv2d(nn.Module):
    """Wraps an `nn.Conv2d` (sharing its parameters): same forward output, filtered backward.

    Without gradients (evaluation, export) it is the plain conv.
    """

    def __init__(self, conv: nn.Conv2d, patch: int, name: str = "conv"):
        super().__init__()
        self.conv = conv
        self.patch = patch
        self.padding = _explicit_padding(conv, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        wants_grad = x.requires_grad or conv.weight.requires_grad or (
            conv.bias is not None and conv.bias.requires_grad)
        if not (torch.is_grad_enabled() and wants_grad):
            return conv(x)
        return FilteredConv2dFunction.apply(x, conv.weight, conv.bias, conv.stride, self.padding,
                                            conv.dilation, conv.groups, self.patch)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


@contextlib.contextmanager
def filtered_convs(model: nn.Module, names: Sequence[str], patch: int) -> Iterator[list[FilteredConv2d]]:
    """Swap the named `nn.Conv2d` modules for `FilteredConv2d` wrappers; put them back on exit.

    The wrappers share the convs' parameters, so training through them updates the model, and the
    model leaves this block as plain torchvision modules (exportable, same state_dict keys).
    """
    originals = {name: model.get_submodule(name) for name in names}
    wrappers = [FilteredConv2d(conv, patch, name) for name, conv in originals.items()]
    for name, wrapper in zip(names, wrappers):
        _set_submodule(model, name, wrapper)
    try:
        yield wrappers
    finally:
        for name, conv in originals.items():
            _set_submodule(model, name, conv)


# --------------------------------------------------------------------------- layer choice


@torch.no_grad()
def execution_order(model: nn.Module, x: torch.Tensor, kind: type[nn.Module]) -> list[str]:
    """Names of the ``kind`` modules in the order the forward pass first calls them.

    Registration order need not be execution order (a model may define its head before its trunk),
    so this runs ``x`` through the model once and watches.
    """
    order: list[str] = []
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, kind):
            hooks.append(module.register_forward_pre_hook(
                lambda _m, _args, name=name: None if name in order else order.append(name)))
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return order


def last_conv_layers(model: nn.Module, x: torch.Tensor, count: int) -> list[str]:
    convs = execution_order(model, x, nn.Conv2d)
    if count > len(convs):
        raise RecipeError(f"asks for the last {count} conv layers, but the model has {len(convs)}",
                          field="train.gradient_filter.layers", hint=f"use at most {len(convs)}")
    return convs[-count:]


def last_linear_layer(model: nn.Module, x: torch.Tensor) -> str:
    linears = execution_order(model, x, nn.Linear)
    if not linears:
        raise RecipeError("gradient filtering trains the model's last Linear layer (its classifier), "
                          "but the model has none", field="train.method")
    return linears[-1]


# --------------------------------------------------------------------------- memory measurement


def _tensor_key(t: torch.Tensor) -> tuple:
    return (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)


@contextlib.contextmanager
def saved_tensor_bytes(exclude: Sequence[torch.Tensor] = ()) -> Iterator[Callable[[], int]]:
    """Count the bytes of the tensors autograd saves for backward inside this block.

    Yields a callable giving the running total. Tensors in ``exclude`` (parameters: they are
    resident anyway) are left out; a tensor saved twice counts once. What runs inside is measured,
    never backpropagated: the graph keeps a size, not the tensor (a tensor saved as itself would be
    tied to its own graph in a cycle through C++ that no garbage collector frees).
    """
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    seen: set[tuple] = set()
    total = [0]
    alive: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> int:
        alive.append(t)  # held while measuring (no address reused), cleared after: the graph holds `pack` too
        key = _tensor_key(t)
        size = t.numel() * t.element_size()
        if t.untyped_storage().data_ptr() not in excluded and key not in seen:
            seen.add(key)
            total[0] += size
        return size

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield lambda: total[0]
    alive.clear()


@dataclass(frozen=True)
class LayerMemory(Result):
    """Activation bytes one conv saves for backward on one batch, plain vs gradient-filtered."""

    name: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    input_shape: tuple[int, ...]  # the measured batch, N,C,H,W
    standard_bytes: int
    filtered_bytes: int
    reduction: float  # standard_bytes / filtered_bytes
    expected_reduction: float  # (R * stride_h) * (R * stride_w)


def _layer_inputs(model: nn.Module, names: Sequence[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    inputs: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(name).register_forward_pre_hook(
        lambda _m, args, name=name: inputs.setdefault(name, args[0].detach().clone())) for name in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return inputs


def measure_layer_memory(model: nn.Module, names: Sequence[str], x: torch.Tensor, patch: int) -> list[LayerMemory]:
    """Measured activation bytes each named conv saves, plain and filtered, on batch ``x``.

    Each layer runs on its real input from ``x``, with input and weights requiring grad (a layer
    inside the trained part). Parameters do not count: they are resident whatever autograd saves.
    """
    measured = []
    for name, inp in _layer_inputs(model, names, x).items():
        conv = model.get_submodule(name)
        weight = conv.weight.detach().requires_grad_(True)
        bias = None if conv.bias is None else conv.bias.detach().requires_grad_(True)
        params = [weight] + ([bias] if bias is not None else [])
        padding = _explicit_padding(conv, name)
        x_in = inp.requires_grad_(True)
        with saved_tensor_bytes(params) as standard:
            F.conv2d(x_in, weight, bias, conv.stride, padding, conv.dilation, conv.groups)
        with saved_tensor_bytes(params) as filtered:
            FilteredConv2dFunction.apply(x_in, weight, bias, conv.stride, padding, conv.dilation,
                                         conv.groups, patch)
        measured.append(LayerMemory(
            name=name, kernel=tuple(conv.kernel_size), stride=tuple(conv.stride), groups=conv.groups,
            input_shape=tuple(inp.shape), standard_bytes=standard(), filtered_bytes=filtered(),
            reduction=standard() / max(1, filtered()),
            expected_reduction=float(patch * conv.stride[0] * patch * conv.stride[1])))
    return measured


# --------------------------------------------------------------------------- fine-tuning


@dataclass(frozen=True)
class FineTuneSummary(Result):
    """What one fine-tuning run of the last conv layers did (gradient filter or plain backprop)."""

    method: str  # "gradient_filter" | "backprop" (the same layers, exact gradients)
    layers: tuple[str, ...]  # the trained conv layers, in execution order
    classifier: str  # the last Linear layer, trained normally
    patch: int | None  # R; None for backprop
    batch_size: int
    lr: float  # after linear scaling with the batch size
    trainable_params: int
    epochs_run: int
    stop_reason: str  # "epochs" | "patience"
    history: tuple[EpochRecord, ...]
    val_accuracy: float  # after the last epoch
    test_accuracy: float
    seconds: float  # the whole run, evaluation included
    step_seconds: float  # median training step during this run (batch fetch, forward, backward, optimizer step)
    saved_activation_bytes: int  # saved for backward by one training forward of the whole model
    layer_memory: tuple[LayerMemory, ...]  # per trained conv: plain vs filtered, measured


@dataclass(frozen=True)
class FineTuneOutcome:
    model: nn.Module  # the same object that was passed in, trained, with its own conv modules back
    summary: FineTuneSummary


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def only_trainable(model: nn.Module, names: Sequence[str]) -> Iterator[list[nn.Parameter]]:
    """Freeze everything but the named modules' parameters; restore the flags afterwards."""
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = [p for name in names for p in model.get_submodule(name).parameters()]
    for p in trainable:
        p.requires_grad_(True)
    try:
        yield trainable
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


def train_gradient_filter(model: nn.Module, data: DataBundle, section: TrainSection, *, device: torch.device,
                          seed: int, filtered: bool = True, augment: Augment = Augment()) -> FineTuneOutcome:
    """Fine-tune the last ``section.gradient_filter.layers`` convs and the classifier of ``model``.

    Everything else is frozen and the whole model runs in eval mode (BatchNorm uses its running
    statistics). ``filtered=False`` is the baseline: the same layers, plain backprop. Trains
    ``model`` in place (on ``device``) and returns it with the run's figures.
    """
    started = time.perf_counter()
    seed_everything(seed)
    model.to(device).eval()
    options = section.gradient_filter
    batch_size = section.batch_size or section.reference_batch_size
    batch_size = min(batch_size, len(data.train))
    probe, probe_labels = next(image_batches(data.train, batch_size, data.preprocessing, device=device))
    convs = last_conv_layers(model, probe, options.layers)
    classifier = last_linear_layer(model, probe)
    layer_memory = tuple(measure_layer_memory(model, convs, probe, options.patch))
    swap = filtered_convs(model, convs, options.patch) if filtered else contextlib.nullcontext()
    with only_trainable(model, [*convs, classifier]) as trainable, swap:
        with saved_tensor_bytes(list(model.parameters())) as saved:
            F.cross_entropy(model(probe), probe_labels)
        saved_bytes = saved()
        optimizer = make_optimizer(trainable, section, global_batch(batch_size))
        base_lr = scaled_lr(section, global_batch(batch_size))
        train_in = shard(ImageInput(data.train, data.preprocessing, augment, device), train=True)
        stepped = data_parallel(model, device)  # several processes: the trainable layers' gradients all-reduced
        steps_per_epoch = math.ceil(len(train_in) / batch_size)
        total_steps = section.epochs * steps_per_epoch

        def step(x: torch.Tensor, y: torch.Tensor, lr: float) -> tuple[float]:
            set_lr(optimizer, lr)
            loss = F.cross_entropy(stepped(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return (float(loss.detach()),)

        val_in = shard(unaugmented(data.monitor, data.preprocessing, device), train=False)
        # The whole model stays in eval mode (BatchNorm frozen): no train_modules.
        outcome = fit(step, train_in, batch_size=batch_size,
                      epochs=range(section.epochs), lr_at=lr_schedule(section, global_batch(batch_size), total_steps),
                      generator_for=rank_generators(
                          lambda epoch: torch.Generator().manual_seed(derived_seed(seed, "fine-tune", epoch)),
                          seed, "fine-tune"),
                      evaluate=synced_evaluate(lambda: (top1_accuracy(model, val_in),), [model], val_in),
                      patience=section.patience,
                      sync=lambda: sync(device), label="gradient filter" if filtered else "backprop (same layers)",
                      log_as="gradient_filter" if filtered else "fine_tune_backprop")
        history, stop_reason = outcome.history, outcome.stop_reason
    summary = FineTuneSummary(
        method="gradient_filter" if filtered else "backprop", layers=tuple(convs), classifier=classifier,
        patch=options.patch if filtered else None, batch_size=batch_size, lr=base_lr,
        trainable_params=sum(p.numel() for p in trainable), epochs_run=len(history), stop_reason=stop_reason,
        history=tuple(history), val_accuracy=history[-1].val_accuracy[0],
        test_accuracy=top1_accuracy(model, unaugmented(data.test, data.preprocessing, device)),
        seconds=time.perf_counter() - started, step_seconds=statistics.median(outcome.step_seconds),
        saved_activation_bytes=saved_bytes, layer_memory=layer_memory)
    return FineTuneOutcome(model, summary)


__all__ = ["FilteredConv2d", "FilteredConv2dFunction", "FineTuneOutcome", "FineTuneSummary", "LayerMemory",
           "execution_order", "filtered_convs", "last_conv_layers", "last_linear_layer", "measure_layer_memory",
           "only_trainable", "saved_tensor_bytes", "sync", "train_gradient_filter"]
