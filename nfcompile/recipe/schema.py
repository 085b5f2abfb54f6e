"""The recipe: one typed section per pipeline stage. Unknown keys are rejected.

Every field has a default that works, a range that makes sense, and a description that the
README's recipe reference is checked against. Relative paths are read from the current folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from nfcompile.core.bytesize import parse_bytes

PositiveInt = Annotated[int, Field(gt=0)]


def _fraction(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        percent = f": for {value:g}% write {value / 100:g}" if 1.0 < value <= 100.0 else ""
        raise ValueError(f"must be a fraction from 0 to 1{percent}")
    return value


Fraction = Annotated[float, AfterValidator(_fraction)]


def _takes_bool(annotation: Any) -> bool:
    return annotation is bool or any(_takes_bool(arg) for arg in get_args(annotation))


class Section(BaseModel):
    # allow_inf_nan=False: NaN passes every range check (each comparison with it is false) and inf is
    # no setting either; a non-finite number anywhere in a recipe is refused, naming its field.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_stray_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads true as 1, and YAML reads yes/no/on/off as booleans: `epochs: yes` would
        # silently become one epoch. Only fields declared bool take true/false.
        if _takes_bool(cls.model_fields[info.field_name].annotation):
            return value
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(item, bool) for item in items):
            raise ValueError("true/false is not valid here (YAML reads yes/no/on/off as true/false too)")
        return value


def _existing_file(value: Path | None, what: str) -> Path | None:
    if value is None:
        return value
    try:
        found = Path(value).is_file()
    except OSError as exc:  # a name too long, a folder we may not enter: a ValueError the schema reports
        raise ValueError(f"{what} {str(value)!r} cannot be looked up ({exc.strerror or exc})") from None
    if not found:
        raise ValueError(f"{what} {str(value)!r} does not exist or is not a file")
    return value


class ModelSection(Section):
    arch: str = Field("resnet18", description="Architecture: one of `nfcompile check --list-archs`.")
    num_classes: PositiveInt | None = Field(None, description="Classes; null takes them from the dataset.")
    small_input: bool = Field(True, description="Small-image stem for inputs of about 32x32: 3x3 stride-1 "
                              "first conv and no max-pool (ResNet), stride-1 stem (MobileNetV2), "
                              "global-pool + linear classifier (VGG).")
    width: Annotated[float, Field(gt=0.0, le=4.0)] = Field(
        1.0, description="Channel multiplier applied to every layer (1.0 is the published width).")
    pretrained: str | None = Field(
        None, description="Initial weights: `torchvision:DEFAULT` (or another weight enum name) or the "
        "path of a state_dict file (loaded with weights_only=True).")

    @field_validator("pretrained")
    @classmethod
    def _pretrained_exists(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("torchvision:"):
            _existing_file(Path(value), "weights file")
        return value


class AugmentSection(Section):
    flip: bool = Field(False, description="Random horizontal flips (off for digits: a flipped 2 is not a 2).")
    crop_padding: Annotated[int, Field(ge=0, le=64)] = Field(
        0, description="Random crops after zero padding by this many pixels (0 disables).")


class DataSection(Section):
    dataset: str = Field("digits", description="digits | fashion_mnist | mnist | kmnist | cifar10 | cifar100 | "
                         "imagefolder.")
    root: Path | None = Field(None, description="Where the dataset lives (the four IDX files of fashion_mnist/mnist/"
                              "kmnist, gzipped or not; cifar10/100; imagefolder). null for fashion_mnist: "
                              "/usr/share/datasets/fashion-mnist (`apt-get install -y dataset-fashion-mnist`).")
    download: bool = Field(False, description="Let torchvision download CIFAR into `root` (needs internet).")
    image_size: Annotated[int, Field(ge=8, le=1024)] = Field(32, description="Side of the square model input.")
    val_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = Field(
        0.15, description="Share of the training data held out for validation: exits are selected on it, and "
        "every epoch evaluates it (or `data.monitor_samples` of it) for snapshots, patience and the curves.")
    test_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = Field(
        0.15, description="Share held out for scoring exits and validation (digits, imagefolder without a "
        "test folder; the MNIST family and CIFAR use their own test sets). Carved splits keep each class's share.")
    max_train_samples: PositiveInt | None = Field(None, description="Use at most this many training samples.")
    max_eval_samples: PositiveInt | None = Field(None, description="Use at most this many val/test samples.")
    monitor_samples: PositiveInt | None = Field(
        None, description="At most this many validation samples evaluated after every training epoch "
        "(best-epoch snapshots, patience, the accuracy curves): a stratified subset of the validation split. "
        "Exits are still scored and selected on the whole split. null: all of it.")
    augment: AugmentSection = AugmentSection()
    mean: tuple[float, float, float] | None = Field(None, description="Normalization mean; null: dataset's own.")
    std: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] | None = \
        Field(None, description="Normalization std; null: dataset's own.")

    @model_validator(mode="after")
    def _consistent(self) -> "DataSection":
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ValueError(f"data.val_fraction + data.test_fraction = "
                             f"{self.val_fraction + self.test_fraction:g} leaves too little to train on")
        if self.download and self.dataset not in ("cifar10", "cifar100"):
            raise ValueError(f"data.download works only for cifar10/cifar100, not {self.dataset!r}")
        return self


class BudgetSection(Section):
    memory: Union[Literal["auto"], int, str] = Field(
        "auto", description="Peak training memory on the device: a size (`96MiB`, `2GB`, bytes) or "
        "`auto` (a fraction of free device memory: NVML, else cudaMemGetInfo, host RAM on CPU).")
    auto_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.8, description="Share of free memory that `auto` takes.")
    enforce: bool = Field(True, description="Fail a block whose measured peak exceeds the budget; on CUDA "
                          "also cap the caching allocator with set_per_process_memory_fraction (what it holds "
                          "in use, plus the budget and segment slack).")

    @field_validator("memory")
    @classmethod
    def _size(cls, value: int | str) -> int | str:
        if value == "auto":
            return value
        return parse_bytes(value)

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory == "auto" else int(self.memory)


class HeadSection(Section):
    policy: Literal["adaptive", "fixed"] = Field(
        "adaptive", description="adaptive: filters per unit chosen for memory; fixed: `filters` everywhere.")
    filters: Annotated[int, Field(ge=1, le=4096)] = Field(
        64, description="Width of every head (fixed) or the widest head (adaptive).")
    min_filters: Annotated[int, Field(ge=1, le=4096)] = Field(8, description="Narrowest adaptive head.")
    memory_ratio: Annotated[float, Field(gt=0.0, le=4.0)] = Field(
        0.25, description="Adaptive rule: a head's activations per sample stay within this share of its "
        "unit's, so the head barely shrinks the batch size.")
    pool_to: Annotated[int, Field(ge=1, le=64)] | None = Field(
        None, description="Average-pool a unit's output to at most this side before the head's convs "
        "(null: no pooling): wide heads on large early maps at little memory.")
    depth: Annotated[int, Field(ge=1, le=3)] = Field(1, description="Conv + BN + ReLU layers in each head.")
    warm_start: bool = Field(
        True, description="A block's heads start from the previous block's last head, trained, wherever their "
        "unit's output shape and head are the same (ResNet: the first unit of every block but the first), "
        "instead of from random weights that must first relearn what the features already give. On the "
        "benchmarks' Fashion-MNIST ResNet-18 at the moderate budget, best validation accuracy 0.835-0.842 "
        "against 0.818-0.831 over three seeds with block batches up to 128; at their cap of 64, 0.848 against "
        "0.842 (one seed), reaching 84% 1.31x sooner. On a second draw of training images (one seed, "
        "benchmarks/results/2026-12-06-intel-xeon-2cpu-21.json) warm-started heads reached the target 1.32x "
        "sooner at the stringent budget and random ones 1.08x sooner at the moderate one. VGG-16 showed no "
        "difference in any run (benchmarks comparison 3).")

    @model_validator(mode="after")
    def _range(self) -> "HeadSection":
        if self.min_filters > self.filters:
            raise ValueError(f"head.min_filters ({self.min_filters}) exceeds head.filters ({self.filters})")
        return self


class CacheSection(Section):
    dtype: Literal["float16", "float32"] = Field("float16", description="Precision of cached activations.")
    placement: Literal["auto", "device", "host", "disk", "recompute"] = Field(
        "auto", description="auto: device if it fits the budget, else host RAM, else a memory-mapped file; "
        "device: on the device, refused at plan time where the budget has no room for it; "
        "recompute: no cache, later blocks run the finished ones forward for every batch.")
    max_host_bytes: Union[int, str, None] = Field(
        None, description="Host RAM the cache may use; null: half of the RAM available at start.")
    feature_augment: bool = Field(
        True, description="Augment cached activations (random shifts, and flips when data.augment.flip), "
        "since caching freezes the input augmentation after the first block.")

    @field_validator("max_host_bytes")
    @classmethod
    def _size(cls, value: int | str | None) -> int | None:
        return None if value is None else parse_bytes(value)


class SlimHeadsSection(Section):
    share: Annotated[float, Field(gt=0.0, lt=1.0)] | None = Field(
        None, description="After a block (and its head_epochs), each of its heads is copied at this share of its "
        "filters, those whose BatchNorm scale is largest (network slimming, Liu et al. 2017), and the copy trains on "
        "the block's frozen units; an exit ships the copy where its accuracy on the monitor split is at least the "
        "head's. A wide head teaches its unit while it learns; the exit needs less, and a head trained on finished "
        "features learns more than one that chased them (null: every exit ships the head its unit learned from). "
        "On the benchmarks' Fashion-MNIST VGG-16 at the stringent budget, half-width slim heads (against one head "
        "epoch per block) moved the exit selection ships from 9.2-19.6x fewer parameters than the full model to "
        "54.0-62.9x and raised the best exit by 0.6-1.0 points (6,000 validation images), and the common target was "
        "reached sooner on two seeds of three and level on the third (the early exits reach it), for 20-24 s of "
        "59-68 s runs (ad hoc, seeds 0-2). ResNet-18's need more epochs (see epochs). A slim copy is judged on the "
        "cached features, at the activation cache's precision (as every block's exits after the first are), on the "
        "split that picked its epochs; the exits are scored again end to end before selection. In the committed runs "
        "VGG-16's best exit on validation was exit_03 on all three seeds: selection ships it (25.9x fewer parameters "
        "than the full model, 2.0-2.8 points above backprop's full model on test), and it reached the common target "
        "1.58x sooner than backprop at the moderate budget (benchmarks comparisons 1 and 2). Judged on accuracies as "
        "measured (select.confidence null), selection shipped exit_01/exit_02/exit_02 (54.0-62.9x), two of them 1.1 "
        "and 1.5 points below the best exit on test.")
    epochs: Annotated[int, Field(ge=1, le=100)] = Field(
        10, description="Epochs each slim copy trains: on its unit's outputs, pooled as the head pools them and "
        "cached once, so an epoch costs the small head's steps, not the units' forward. The benchmarks' "
        "Fashion-MNIST ResNet-18 trains them 40: its early exits kept improving on their frozen units well past 10 "
        "(exit_00 and exit_01 at 0.83-0.84 validation accuracy, from 0.74-0.76 without slim heads; ad hoc, "
        "benchmarks/config.py). In the committed run (at batch 128: see batch_size) selection shipped "
        "exit_01/exit_00/exit_02 (47.9-132.2x fewer parameters than the full model, 0.0-0.8 points below the best "
        "exit and -0.4 to +1.4 points against backprop's full model on test), and it reached the common target "
        "2.5-8.4x sooner than backprop at every budget (benchmarks comparisons 1 and 2). The price is the whole "
        "schedule: 40 epochs made a run about 70 s instead of 31 (ad hoc, batch 64, every block trained); in the "
        "committed run, with stop_stalled_blocks, backprop's whole run took 1.12x NeuroFlux's CPU time at the "
        "moderate budget and 0.95x at the generous one.")
    batch_size: Annotated[int, Field(ge=2, le=4096)] = Field(
        64, description="The slim copies' batch (per process) at most: less where the training set is smaller, or "
        "where the activations the block's own step held at its batch would not cover it. At train.lr scaled to "
        "it and neuroflux.lr_scale, with a warm-up and train.schedule; the features are not augmented. A slim "
        "step's cost is mostly its fixed overhead: the benchmarks' ResNet-18 trains its 40 slim epochs at 128, where "
        "the slim heads took 0.54-0.63x their time at 64 and whole runs 0.71-0.80x, the best exit at most 0.2 points "
        "lower on validation and the same exits shipped (ad hoc, seeds 0-2, benchmarks/config.py); 256 lost 0.3-0.7 "
        "points. VGG-16's 10 epochs lost up to 0.4 points at 128 and 1.3 at 256, and keep 64.")


class NeuroFluxSection(Section):
    head: HeadSection = HeadSection()
    cache: CacheSection = CacheSection()
    slim_heads: SlimHeadsSection = SlimHeadsSection()
    lr_scale: Annotated[float, Field(gt=0.0, le=16.0)] = Field(
        2.0, description="NeuroFlux's units train at train.lr times this. A unit learns from its shallow "
        "auxiliary head, not from the whole network's gradient: validation picked twice backprop's rate in all "
        "four benchmark setups (benchmarks comparison 12), at batches up to about 100. Where blocks train at "
        "batches of several hundred the scaled rate is large already: the quickstart keeps 1.")
    block_split_ratio: Annotated[float, Field(ge=1.0)] = Field(
        2.0, description="Start a new block where a unit's largest batch differs from the block's by more "
        "than this factor.")
    max_units_per_block: PositiveInt | None = Field(
        2, description="Start a new block once a block holds this many units (null: only batch sizes split). Blocks "
        "train one after another, each on its finished predecessor's features; units trained together in one block "
        "chase each other's moving outputs. Split by batch size only, the benchmarks' Fashion-MNIST ResNet-18 and VGG-16 "
        "lost 1.9-3.6 points of validation accuracy and reached the common target 1.3-2.7x later at the budgets where "
        "every unit fits one block, 1.1-1.5x later at the stringent one (benchmarks comparison 3, one seed per run, "
        "two draws of training images and VGG-16 at block batches up to 64 and 32).")
    block_epochs: tuple[PositiveInt, ...] = Field(
        (), description="Epochs of the first blocks of the plan, in order, each at most train.epochs; the blocks "
        "after them train train.epochs (empty: every block does). Which units a block holds depends on the plan "
        "(budget, max_units_per_block, block_split_ratio): `nfcompile plan` shows it. An early block's own exits "
        "need not converge where a deeper block's exits will be the better ones: its units have learned most of "
        "what the next blocks build on in a few epochs. On the benchmarks' Fashion-MNIST ResNet-18, whose first "
        "two blocks' exits stay 2-9 points below its best, 3 epochs for those two blocks (5 for the rest) reached"
        " the common target 1.0-1.4x sooner than backprop at the moderate budget, where 5 everywhere reached it "
        "0.80-0.95x as soon, for a best exit 0.1-0.9 points lower (ad hoc, held-out seeds 3-4, two rounds). In "
        "a committed run before its exits shipped slim heads it reached the target 1.14x sooner than backprop at "
        "the moderate budget over three seeds (benchmarks/results/2026-12-07-intel-xeon-2cpu-5.json), and "
        "1.17-1.21x sooner than 5 everywhere at every budget (benchmarks comparison 3). It cost accuracy where the "
        "budget is tight: at the stringent budget its fifth exit lost 1.0-1.8 points of validation accuracy and its "
        "best 0.2-0.8 (three seeds), and the deliverable shipped a deeper exit on one seed of three "
        "(2026-12-07-intel-xeon-2cpu.json). On VGG-16, whose second block's exits already reach the target, it "
        "was mixed (later on one seed, sooner on the other), so its benchmark setup keeps 5.")
    head_epochs: Annotated[int, Field(ge=0, le=100)] = Field(
        0, description="After a block's epochs, its heads train this many more on its units frozen: each batch runs "
        "through the units without gradients (in eval mode) and every head steps on its own loss, at the block's "
        "batch, warming up again to the block's peak learning rate and annealing on a schedule of their own. A head "
        "keeps its new weights only where its exit's accuracy on the monitor split did not fall. A unit and its head "
        "learn together, so when the unit stops the head has not yet caught up with its final features; an epoch of "
        "the heads costs a forward through the units and the heads' steps, not the units' backward (0: none). On the "
        "benchmarks' Fashion-MNIST VGG-16 at the stringent budget one head epoch per block moved the exit selection "
        "ships from exit_05 (9.2x fewer parameters than the full model) to exit_04 (19.6x) on seed 0 and from exit_06 "
        "(6.7x) to exit_05 (9.2x) on seed 2 (seed 1: exit_04 either way), for 4.4-4.7 s of a 36-39 s run (ad hoc, "
        "6,000 validation images). In the committed run VGG shipped exit_04/exit_04/exit_05 (19.6/19.6/9.2x; the run "
        "before, without it: 9.2/19.6/6.7x; benchmarks comparison 2) and still reached the common target 1.10x sooner "
        "than backprop at the moderate budget (1.25x the run before; comparison 1). On ResNet-18 it did not pay: the "
        "exit that decides its deliverable gained 0.0-0.7 points from two, and at the moderate budget one reached the "
        "common target 1.09-1.15x later than none (benchmarks/config.py has the figures). Once slim_heads trains each "
        "exit's shipped head on the finished units, it changed little on VGG-16 (one seed, ad hoc), whose setup "
        "dropped it.")
    profile_batch_sizes: tuple[PositiveInt, ...] = Field(
        (4, 16), description="Batch sizes at which each unit's training step, and each block's evaluation, is "
        "first measured (two or more).")
    max_batch_size: PositiveInt = Field(
        512, description="Upper bound on any block's batch size, and on the batch the plan gives the backprop "
        "baselines. On a small training set a lower cap buys steps: the benchmarks' Fashion-MNIST setups (1,470-1,960 "
        "images, up to 5 epochs per block) use 64 (ResNet-18) and 32 (VGG-16, whose units' gradient noise scales are "
        "mostly 30-40: see batch_policy). At the generous budget, where every block trains at the cap, 128 reached "
        "the common target 1.2-2.0x later; at the moderate one ResNet-18 1.4-1.9x later on one draw of training "
        "images and 1.07-1.14x sooner on another, VGG-16 1.4x later than at 32 (benchmarks comparison 3, one seed "
        "per run).")
    batch_policy: Literal["largest", "noise_scale"] = Field(
        "largest", description="largest: every block trains at the largest batch that fits the budget (up to "
        "max_batch_size). noise_scale: at most that, and no larger than the gradient noise scale its units "
        "measure at the block's start (McCandlish et al. 2018), above which a larger batch buys little progress "
        "per step. It grows as the loss falls, so a figure from the block's start is low for its later epochs. "
        "Measured on 8 of the largest batches split into 4, so blocks whose largest batch is under 8 "
        "keep it. Where a step costs nearly its samples' time (a CPU) a batch above the noise scale wastes "
        "samples; on a GPU a larger batch is nearly free, so largest is the default. On the benchmarks' "
        "Fashion-MNIST setups (CPU) the measurement (8 batches per unit) cost more than the smaller batches "
        "saved: the common target 1.06-1.16x later at every budget (benchmarks comparison 3, one seed per run); "
        "VGG-16's cap of 32 was chosen from what it measured.")
    reuse_profiles: bool = Field(
        True, description="Reuse the unit, block and baseline profiles an earlier plan measured on this machine "
        "for the same code, model, input, budget and step settings (kept in $NFCOMPILE_CACHE_DIR/profiles, else "
        "the user's cache folder); false measures every time.")
    stop_stalled_blocks: bool = Field(
        True, description="Skip the remaining blocks once a block's best exit (as it ships, after slim heads) fails "
        "to beat the earlier exits by `stall_delta` on the monitor split: selection ships an early exit, and the "
        "deeper blocks would train for nothing (their exits are not scored; the report still sizes the chosen exit "
        "against the whole network). On the benchmarks' Fashion-MNIST setups at the stringent budget it shipped the "
        "exit the whole run ships, at the same test accuracy, on all three seeds of both (ResNet-18 exit_01, exit_00, "
        "exit_01; VGG-16 exit_03), in 0.42-0.75x (ResNet-18, 2-3 of 5 blocks) and 0.39-0.56x (VGG-16, 2-3 of 7) of "
        "the whole run's wall time (ad hoc, interleaved, one thread, load 0.6-1.1); on the quickstart the same exit "
        "in 22 s of training instead of 26. false trains every block: for the deeper exits themselves.")
    stall_delta: Annotated[float, Field(ge=0.0, le=1.0)] = Field(0.002, description="Accuracy gain that counts.")

    @field_validator("profile_batch_sizes")
    @classmethod
    def _two_sizes(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(value)) < 2:
            raise ValueError("needs at least two different batch sizes to fit memory = P + b*A")
        return tuple(sorted(set(value)))


class BackpropSection(Section):
    checkpointing: bool = Field(False, description="Gradient checkpointing at unit boundaries.")


class GradientFilterSection(Section):
    layers: PositiveInt = Field(2, description="Last N conv layers to fine-tune with filtered gradients.")
    patch: Annotated[int, Field(ge=1, le=16)] = Field(2, description="R: gradients averaged over RxR patches.")


class TrainSection(Section):
    method: Literal["neuroflux", "backprop", "gradient_filter"] = Field("neuroflux", description="Training method.")
    epochs: PositiveInt = Field(
        10, description="Epochs per block (NeuroFlux: the first blocks may train fewer, neuroflux.block_epochs) "
        "or in total (backprop).")
    patience: Annotated[int, Field(ge=0)] = Field(
        3, description="Stop a block after this many epochs without a better exit (0: never early).")
    optimizer: Literal["sgd", "adam", "adamw"] = Field("sgd", description="Optimizer per unit.")
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = Field(0.05, description="Learning rate at reference_batch_size.")
    reference_batch_size: PositiveInt = Field(
        64, description="The learning rate scales linearly: lr * batch / reference_batch_size.")
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(0.9, description="SGD momentum.")
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = Field(5e-4, description="Weight decay.")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="Learning-rate schedule per block.")
    batch_size: PositiveInt | None = Field(
        None, description="Backprop/gradient filter batch; null: the largest that fits the budget.")
    neuroflux: NeuroFluxSection = NeuroFluxSection()
    backprop: BackpropSection = BackpropSection()
    gradient_filter: GradientFilterSection = GradientFilterSection()


class BenchSection(Section):
    backend: Annotated[str, Field(min_length=1, max_length=64)] = Field(
        "ort-cpu", description="Where latency is measured when scoring exits and in `nfcompile bench`: a runtime "
        "that `nfcompile check --list-archs` lists (ort-cpu, ort-cuda, tensorrt).")
    warmup: Annotated[int, Field(ge=0)] = Field(10, description="Untimed runs before timing.")
    repeats: Annotated[int, Field(ge=3)] = Field(50, description="Timed runs; p50/p90 are over these.")
    batch_sizes: tuple[PositiveInt, ...] = Field((1, 32), description="Batch sizes to time.")
    threads: PositiveInt | None = Field(None, description="ONNX Runtime intra-op threads; null: its default.")
    max_latency_ms: Annotated[float, Field(gt=0)] | None = Field(
        None, description="`bench` exits 3 when the p50 at batch 1 is slower than this.")
    table: Path | None = Field(
        None, description="Latency table from `nfcompile bench --emit-table` on the target; used instead "
        "of measuring here.")

    @field_validator("table")
    @classmethod
    def _table_exists(cls, value: Path | None) -> Path | None:
        return _existing_file(value, "latency table")


class SelectSection(Section):
    policy: Literal["smallest_within", "max_accuracy", "knee"] = Field(
        "smallest_within", description="smallest_within: smallest exit within `within_points` of the best "
        "accuracy (at `confidence`); max_accuracy; knee: the front's point farthest from the line joining its ends.")
    within_points: Annotated[float, Field(ge=0.0, le=100.0)] = Field(
        1.0, description="Accuracy points (percent) below the best that smallest_within accepts, judged at "
        "`confidence`.")
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)] | None = Field(
        0.95, description="smallest_within accepts an exit only where a one-sided lower bound, at this "
        "confidence, of its accuracy minus the best's (paired on the validation images, Agresti-Min) is within "
        "`within_points`; null: the accuracies as measured. The bound holds per comparison, not for the pick among "
        "several exits. 0.95 is the conventional one-sided level, not "
        "tuned. Over 1,000 random halvings of the benchmarks' 6,000 Fashion-MNIST validation images (ResNet-18 "
        "and VGG-16, seeds 0-2), an exit chosen on one half fell more than within_points below that half's best "
        "exit on the other half in 0.0-28.5% of halvings as measured, 0.0-5.1% at 0.95 (benchmarks comparison 2).")
    latency_batch_size: PositiveInt = Field(1, description="Which batch size's p50 is the latency objective.")
    min_accuracy: Fraction | None = Field(None, description="Constraint: accuracy at least (0.95 = 95%).")
    max_latency_ms: Annotated[float, Field(gt=0)] | None = Field(None, description="Constraint: p50 latency at most.")
    max_size_mb: Annotated[float, Field(gt=0)] | None = Field(None, description="Constraint: ONNX size at most (MB).")
    max_params: PositiveInt | None = Field(None, description="Constraint: parameters at most.")
    latency_format: Literal["fp32", "int8"] = Field(
        "fp32", description="Which model's latency the front and `max_latency_ms` use: the FP32 graph that ships, "
        "or its INT8 QDQ version.")


class PruneSection(Section):
    enabled: bool = Field(False, description="Prune before export.")
    method: Literal["drive", "magnitude", "snip", "synflow"] = Field("drive", description="Pruning method.")
    target: Literal["chosen_exit", "full_model"] = Field("chosen_exit", description="What to prune.")
    sparsity: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(0.9, description="Share of weights removed.")
    dense_epochs: Annotated[int, Field(ge=0)] = Field(2, description="DRIVE: dense epochs before pruning.")
    rounds: PositiveInt = Field(5, description="Iterative rounds (exponential sparsity schedule).")
    finetune_epochs: Annotated[int, Field(ge=0)] = Field(
        0, description="Masked fine-tuning epochs between rounds; 0 prunes round after round (each ranked on fresh "
        "gradients), then fine-tunes with the masks for the rest of train.epochs.")
    baselines: tuple[Literal["magnitude", "snip", "synflow"], ...] = Field(
        (), description="Also prune with these at the same sparsity and report them side by side.")


class ExportSection(Section):
    exporter: Literal["dynamo", "torchscript"] = Field("dynamo", description="torch.onnx exporter.")
    opset: Annotated[int, Field(ge=13, le=23)] = Field(18, description="ONNX opset.")
    dynamic_batch: bool = Field(True, description="Dynamic batch dimension.")
    simplify: bool = Field(True, description="Run onnxsim; kept only if it re-validates.")
    ort_format: bool = Field(False, description="Also write model.ort (ONNX Runtime's mobile format, by its own "
                             "converter) with its mobile usability check.")


class QuantizeSection(Section):
    enabled: bool = Field(True, description="Produce model.int8.onnx (static QDQ, ONNX Runtime).")
    calibration_samples: PositiveInt = Field(256, description="Training samples used for calibration.")
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="Calibration.")
    per_channel: bool = Field(True, description="Per-channel weight scales.")
    activations: Literal["auto", "int8", "uint8"] = Field(
        "auto", description="int8: signed and symmetric (zero point 0), what TensorRT's explicit quantization takes; "
        "uint8: unsigned with a calibrated zero point, the pairing (uint8 activations, int8 weights) ONNX "
        "Runtime's x86 CPU kernels are built for; auto: int8 when an INT8 engine is built or bench.backend is not "
        "ort-cpu, else uint8. Weights are int8 and symmetric either way.")
    max_accuracy_drop: Fraction = Field(0.01, description="Gate: INT8 accuracy may drop this much (0.01 = 1 point).")


class TensorRTSection(Section):
    enabled: bool = Field(True, description="Build a TensorRT engine where tensorrt and CUDA are present.")
    precision: Literal["fp32", "fp16", "int8"] = Field("fp16", description="Engine precision (int8 uses the QDQ model).")
    min_batch: PositiveInt = Field(1, description="Optimization profile: smallest batch.")
    opt_batch: PositiveInt = Field(8, description="Optimization profile: batch to tune for.")
    max_batch: PositiveInt = Field(32, description="Optimization profile: largest batch.")
    workspace: Union[int, str] = Field("1GiB", description="Builder workspace memory pool limit.")
    timing_cache: Path | None = Field(None, description="Existing timing cache to start from (read only).")

    @field_validator("workspace")
    @classmethod
    def _size(cls, value: int | str) -> int:
        return parse_bytes(value)

    @field_validator("timing_cache")
    @classmethod
    def _cache_exists(cls, value: Path | None) -> Path | None:
        return _existing_file(value, "timing cache")

    @model_validator(mode="after")
    def _profile(self) -> "TensorRTSection":
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"needs min_batch <= opt_batch <= max_batch, got "
                             f"{self.min_batch}, {self.opt_batch}, {self.max_batch}")
        return self


class ValidateSection(Section):
    atol: Annotated[float, Field(ge=0.0)] = Field(1e-4, description="Absolute tolerance (Polygraphy-style).")
    rtol: Annotated[float, Field(ge=0.0)] = Field(1e-3, description="Relative tolerance.")
    max_abs_error: Annotated[float, Field(ge=0.0)] = Field(1e-4, description="Gate: FP32 ONNX max |error| on logits.")
    min_top1_agreement: Fraction = Field(1.0, description="Gate: FP32 ONNX top-1 agreement with PyTorch.")
    engine_atol: Annotated[float, Field(ge=0.0)] = Field(5e-2, description="Tolerance for FP16/INT8 engines.")
    engine_min_top1_agreement: Fraction = Field(0.98, description="Gate: engine top-1 agreement.")
    samples: PositiveInt | None = Field(None, description="Held-out samples to compare on; null: the whole test split.")


class LogSection(Section):
    tensorboard: bool = Field(True, description="TensorBoard event files in the run folder (`tensorboard/`): "
                              "losses, accuracies, learning rate and memory per block and epoch; exit scores.")


class DistributedSection(Section):
    """Read only when torchrun launched the build (`torchrun --nproc-per-node N -m nfcompile build`, or
    `nfcompile build --nproc N`); a single process ignores it."""

    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="Process-group backend: auto is nccl on CUDA, gloo on CPU.")
    sync_batchnorm: bool = Field(
        False, description="BatchNorm statistics over the global batch (SyncBatchNorm; CUDA only) instead "
        "of each rank's own batch.")
    timeout_minutes: Annotated[float, Field(gt=0.0)] = Field(
        60.0, description="Longest wait in one collective: ranks other than 0 wait while rank 0 scores "
        "and exports.")


class Recipe(Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] = Field(
        ..., description="Names the artifact folder: letters, digits, `_`, `.`, `-`.")
    seed: Annotated[int, Field(ge=0, lt=2**31)] = Field(0, description="Seed for splits, init and data order.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")
    threads: PositiveInt | Literal["auto"] = Field(
        "auto", description="torch's CPU threads. auto: the cores no other process keeps busy when the run starts "
        "(at least 1); OpenMP waits passively either way. A number pins it: the same recipe, seed and threads "
        "give the same model.")
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    budget: BudgetSection = BudgetSection()
    train: TrainSection = TrainSection()
    select: SelectSection = SelectSection()
    prune: PruneSection = PruneSection()
    export: ExportSection = ExportSection()
    quantize: QuantizeSection = QuantizeSection()
    tensorrt: TensorRTSection = TensorRTSection()
    # `validate` is the YAML key; the attribute is `validation` (pydantic owns `validate`).
    validation: ValidateSection = Field(ValidateSection(), alias="validate")
    bench: BenchSection = BenchSection()
    log: LogSection = LogSection()
    distributed: DistributedSection = DistributedSection()

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False,
                              validate_by_alias=True, validate_by_name=False, serialize_by_alias=True)

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        if self.tensorrt.enabled and self.tensorrt.precision == "int8" and not self.quantize.enabled:
            raise ValueError("tensorrt.precision int8 builds from the QDQ model: set quantize.enabled: true")
        if self.tensorrt.enabled and self.tensorrt.precision == "int8" and self.quantize.activations == "uint8":
            raise ValueError("tensorrt.precision int8 builds from the QDQ model, and TensorRT takes only int8 "
                             "activations with zero point 0: set quantize.activations: int8 (or auto)")
        if self.train.method == "gradient_filter" and self.model.pretrained is None:
            raise ValueError("train.method gradient_filter fine-tunes a trained model: set model.pretrained")
        if self.select.latency_batch_size not in self.bench.batch_sizes:
            raise ValueError(f"select.latency_batch_size {self.select.latency_batch_size} is not one of "
                             f"bench.batch_sizes {list(self.bench.batch_sizes)}")
        return self
