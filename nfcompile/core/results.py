"""What stages hand each other: frozen dataclasses that round-trip through JSON.

Stages never import each other; they pass these. `to_dict()` gives plain JSON types and
`from_dict()` rebuilds the object, which is how a resumed build reuses a finished stage.
Sizes are bytes, times seconds (or milliseconds where the name says `_ms`), accuracies
fractions in [0, 1].
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Optional, TypeVar

from pydantic import ConfigDict, TypeAdapter, ValidationError

from nfcompile.errors import InputError

if TYPE_CHECKING:
    from torch import nn

T = TypeVar("T", bound="Result")


class Result:
    """Mixin: JSON round-trip for nested frozen dataclasses, validated on the way back in.

    `from_dict` checks the data against the class's fields with pydantic (types, nesting, nothing
    missing, nothing unknown), so a stale or hand-edited state file is a clear error, never a
    half-right object that a resumed build would trust.
    """

    __pydantic_config__ = ConfigDict(extra="forbid")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[T], data: Any, *, source: str | None = None) -> T:
        """``source`` names where ``data`` was read from (a file) in the error."""
        try:
            return _adapter(cls).validate_python(data)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in error["loc"]) or "(top level)"
            more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
            raise InputError(f"{source or 'stored result'}: not a valid {cls.__name__}: {where}: "
                             f"{error['msg']}{more}") from None


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def _plain(value: Any) -> Any:
    if isinstance(value, Result):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class UnitProfile(Result):
    """One unit (with its auxiliary head) measured at several batch sizes: mem(b) = P + b*A."""

    index: int
    name: str
    in_shape: tuple[int, ...]  # per sample, C,H,W
    out_shape: tuple[int, ...]
    params: int
    head_filters: int
    head_params: int
    fixed_bytes: int  # P: weights, grads, optimizer state, workspace
    bytes_per_sample: int  # A: activations per sample
    measurements: tuple[tuple[int, int], ...]  # (batch size, measured peak bytes)
    fit_error: float  # largest relative error of the memory model over the measurements
    cache_bytes_per_sample: int  # this unit's output per sample, at the cache dtype
    # The profiled step at the largest batch measured, per sample (CPU: under the memory tracker)
    seconds_per_sample: float
    max_batch_size: int  # largest batch that fits the budget for this unit alone
    fetch_bytes_per_sample: int = 0  # preparing this unit's input batch when it starts a block
    state_bytes: int = 0  # parameters and buffers of the unit and its head (resident wherever they live)
    head_pool: int = 1  # the head's pooling kernel (1: none)
    head_depth: int = 1  # conv layers in the head

    def predicted_bytes(self, batch_size: int) -> int:
        return int(self.fixed_bytes + batch_size * self.bytes_per_sample)


@dataclass(frozen=True)
class BlockPlan(Result):
    index: int
    units: tuple[int, ...]
    batch_size: int
    # The block's whole peak, as its meter measures it: training (everything resident on the device
    # meanwhile, see `Plan`), its slim heads' phase, or the pass that fills its output cache, whichever
    # is highest.
    predicted_peak_bytes: int
    cache_placement: str  # where this block's output is cached: device | host | disk | none
    cache_bytes: int  # size of that cache (train + validation splits)
    other_resident_bytes: int = 0  # the rest of the network's weights, resident on the device meanwhile
    caching_peak_bytes: int = 0  # predicted peak of the pass that fills this block's output cache
    # The batch that pass runs at: the evaluation batch, lowered where the outputs it writes (and a cache the
    # recipe forces onto the device) would not fit beside it (0: the training batch, as older plans had).
    caching_batch_size: int = 0
    # The batch its exits are evaluated at after every epoch: the largest whose measured evaluation
    # peak stays within the training step's (0: the training batch, as plans written before it had).
    evaluation_batch_size: int = 0
    # neuroflux.slim_heads: where the block's pooled features for its slim heads are cached (device | host
    # | disk; none: no slim heads), their size, the phase's predicted peak, and the batch of the pass that
    # computes them (`stages/plan/slim_phase.py`).
    slim_features_placement: str = "none"
    slim_features_bytes: int = 0
    slim_peak_bytes: int = 0
    slim_features_batch: int = 0

    @property
    def evaluation_batch(self) -> int:
        return self.evaluation_batch_size or self.batch_size

    @property
    def caching_batch(self) -> int:
        return self.caching_batch_size or self.batch_size


@dataclass(frozen=True)
class Plan(Result):
    device: str
    budget_bytes: int
    budget_source: str  # "recipe" or how `auto` was read (nvml, cudaMemGetInfo, host RAM)
    min_budget_bytes: int  # what batch size 1 needs for the hungriest unit
    head_policy: str
    units: tuple[UnitProfile, ...]
    blocks: tuple[BlockPlan, ...]
    backprop_batch_size: int  # plain backprop, largest batch under the same budget
    backprop_predicted_peak_bytes: int
    backprop_measurements: tuple[tuple[int, int], ...]
    checkpointing_batch_size: int  # backprop with gradient checkpointing, same budget
    checkpointing_predicted_peak_bytes: int
    checkpointing_measurements: tuple[tuple[int, int], ...]
    train_samples: int
    val_samples: int  # evaluated after every epoch (`DataBundle.monitor`): what the activation cache holds
    network_state_bytes: int = 0  # parameters and buffers of every unit, head and the classifier
    # What a block's predicted peak counts, in words (it differs between CPU and CUDA).
    accounting: str = ""
    # Step profiles (units, block checks, baselines) measured by this plan, and reused from an earlier
    # plan's measurements (train.neuroflux.reuse_profiles).
    profiles_measured: int = 0
    profiles_reused: int = 0
    # The baselines' evaluation batches, chosen as a block's is (0: their training batch).
    backprop_evaluation_batch_size: int = 0
    checkpointing_evaluation_batch_size: int = 0

    @property
    def has_slim_phase(self) -> bool:
        """Some block trains slim heads (neuroflux.slim_heads): reports show where their features go."""
        return any(block.slim_features_placement != "none" for block in self.blocks)

    def baseline_evaluation_batch(self, checkpointing: bool, batch: int) -> int:
        """The batch a baseline training at ``batch`` evaluates at: the plan's, measured within the planned
        step's peak (within the budget whatever batch a recipe sets), never below the training batch."""
        planned = self.checkpointing_evaluation_batch_size if checkpointing else self.backprop_evaluation_batch_size
        return max(batch, planned)


# --------------------------------------------------------------------------- train


@dataclass(frozen=True)
class EpochRecord(Result):
    epoch: int
    lr: float
    train_loss: tuple[float, ...]  # per unit of the block, mean local loss
    val_accuracy: tuple[float, ...]  # per unit of the block, accuracy of its exit
    seconds: float


@dataclass(frozen=True)
class BlockResult(Result):
    index: int
    units: tuple[int, ...]
    batch_size: int
    trained: bool
    stop_reason: str  # "epochs", "patience", "exits stopped improving", "resumed", ...
    epochs_run: int
    # per unit of the block, of the weights it kept: its best epoch's, or with neuroflux.head_epochs the
    # higher of that and the heads' last epoch, head by head (so possibly no single record of `history`);
    # where its exit ships a slim head (neuroflux.slim_heads), that head's
    best_val_accuracy: tuple[float, ...]
    measured_peak_bytes: int | None
    predicted_peak_bytes: int
    budget_bytes: int | None  # None where the method runs without a memory plan (fine-tuning)
    seconds: float
    cache_placement: str
    cache_bytes: int
    cache_seconds: float
    history: tuple[EpochRecord, ...] = ()  # every epoch; with neuroflux.head_epochs the heads' after epochs_run
    # The independent measurement (`core.memory.BlockMeter`): measured_peak_bytes is its tracked peak.
    rss_rise_bytes: int | None = None  # CPU: rise of the process's anonymous resident memory over the block
    peak_breakdown: dict[str, int] = field(default_factory=dict)  # what held the memory at the peak (CPU)
    measurement: str = ""  # how the peak was measured, in words
    # Where the block's time went (`learning.loop.FitOutcome.time_spent`), and the memory meter's scan
    # before it (`METER_SCAN`, not in `seconds`); a NeuroFlux block adds its "caching pass" (when its
    # output feeds the next block), with batch_policy noise_scale `NOISE_SCALE` (in `seconds`, before its
    # first epoch), with head_epochs `HEAD_EPOCHS` (in `seconds`, after the units' epochs) and with
    # slim_heads `SLIM_HEADS` (in `seconds`, after them).
    time_spent: dict[str, float] = field(default_factory=dict)
    # NeuroFlux with batch_policy noise_scale: the smallest gradient noise scale of the block's units,
    # measured at its start (`learning.noise_scale`); None where not measured or not measurable.
    noise_scale: float | None = None
    # neuroflux.slim_heads: per unit of the block, the filters of the slim head its exit ships, 0 where it
    # ships the head it learned from; () where slim heads were not trained.
    slim_head_filters: tuple[int, ...] = ()

    @property
    def epochs_label(self) -> str:
        """The epochs it ran, and the heads' own epochs after them (`neuroflux.head_epochs`, in `history`
        after the block's): "5 + 1 heads"."""
        heads = len(self.history) - self.epochs_run
        return f"{self.epochs_run} + {heads} heads" if heads > 0 else str(self.epochs_run)


METER_SCAN = "memory meter's scan"  # a block's phase before its first step (CPU: `core.memory.BlockMeter`)
NOISE_SCALE = "noise scale"  # a NeuroFlux block's phase before its first step (batch_policy noise_scale)
HEAD_EPOCHS = "head epochs"  # a NeuroFlux block's phase after its units' epochs (neuroflux.head_epochs)
SLIM_HEADS = "slim heads"  # a NeuroFlux block's phase after those (neuroflux.slim_heads)

TIME_PHASES = {  # `TrainResult.time_spent` phases, in words (report, benchmarks)
    "steps": "training steps (forward, losses, backward, optimizer)",
    "batches": "preparing batches (image or cache reads, augmentation)",
    "evaluation": "evaluating every exit after each epoch",
    "snapshots": "best-epoch snapshots",
    "caching pass": "caching passes",
    HEAD_EPOCHS: "training each block's heads on its frozen units (neuroflux.head_epochs)",
    SLIM_HEADS: "training the exits' slim heads on cached features (neuroflux.slim_heads)",
    METER_SCAN: "the memory meter's scan of live tensors before each block",
    NOISE_SCALE: "measuring each block's gradient noise scale (its batch size)",
    "rest": "the rest (checkpoints, moving blocks, logging)",
}


@dataclass(frozen=True)
class TrainResult(Result):
    method: str  # neuroflux | backprop | gradient_filter
    device: str
    budget_bytes: int | None
    checkpoint: str  # path relative to the run folder
    blocks: tuple[BlockResult, ...]
    exit_units: tuple[int, ...]  # units that carry a trained exit
    exit_val_accuracy: tuple[float, ...]  # same order as exit_units
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)  # method-specific figures

    def time_spent(self) -> dict[str, float]:
        """Where this run's seconds went, summed over the blocks it trained (`BlockResult.time_spent`;
        blocks a resumed run restored were timed by an earlier process); "rest" is what no block's
        phases account for: checkpoints, moving finished blocks, a resumed run rebuilding its cache,
        logging. Empty for a record without the breakdown."""
        spent: dict[str, float] = {}
        for block in self.blocks[int(self.details.get("resumed_blocks", 0)):]:
            for phase, seconds in block.time_spent.items():
                spent[phase] = spent.get(phase, 0.0) + seconds
        if spent:
            spent["rest"] = max(0.0, self.seconds - sum(spent.values()))
        return spent


@dataclass(frozen=True)
class TrainOutcome:
    """What a training method hands the pipeline: the trained network (a `MultiExitNet`) and its record."""

    net: "nn.Module"
    result: TrainResult


# --------------------------------------------------------------------------- score / select


@dataclass(frozen=True)
class Latency(Result):
    batch_size: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    warmup: int


@dataclass(frozen=True)
class MachineLoad(Result):
    """The machine's load when a latency was measured: timings on a busy machine are not comparable."""

    load_average: tuple[float, float, float]  # os.getloadavg(): 1, 5 and 15 minutes
    cpu_count: int
    busy: tuple[str, ...]  # other processes using CPU meanwhile: "name (pid N) 95% CPU"
    other_cpu_percent: float  # their CPU use summed, in percent of one core
    loaded: bool  # other processes used at least half a core: the figures carry their noise

    def describe(self) -> str:
        load = ", ".join(f"{value:.2f}" for value in self.load_average)
        others = f"; busy: {', '.join(self.busy)}" if self.busy else "; no other busy process"
        return f"load average {load} on {self.cpu_count} CPUs{others}"


@dataclass(frozen=True)
class ExitScore(Result):
    name: str  # "exit_03"; "full" for all units + last head
    unit: int  # index of the last unit of the prefix
    # Selection's accuracy: the validation split (None where the exit was not trained, the full
    # model after an early stop). The headline figure is `test_accuracy`, on the untouched test split.
    accuracy: float | None
    params: int
    macs: int
    onnx_bytes: int
    onnx_sha256: str
    latency: tuple[Latency, ...]  # one per batch size
    latency_source: str  # "measured: onnxruntime CPUExecutionProvider" or "table: <file>"
    # The ONNX that was sized and timed, relative to the run folder. The full model points at the
    # last exit's file when that exit was trained: they are the same network.
    onnx_file: str = ""
    test_accuracy: float | None = None  # the test split: measured, never used to select
    int8_latency: tuple[Latency, ...] = ()  # its INT8 QDQ graph, where select.latency_format is int8
    int8_file: str = ""

    def latency_at(self, batch_size: int, fmt: str = "fp32") -> Latency | None:
        """The latency at ``batch_size`` of the FP32 graph, or of the INT8 one (``fmt`` int8)."""
        timed = self.int8_latency if fmt == "int8" else self.latency
        return next((lat for lat in timed if lat.batch_size == batch_size), None)


@dataclass(frozen=True)
class ExitScores(Result):
    exits: tuple[ExitScore, ...]
    full_model: ExitScore
    backend: str
    test_samples: int
    batch_sizes: tuple[int, ...]
    val_samples: int = 0  # the split `ExitScore.accuracy` is measured on
    load: MachineLoad | None = None  # while the exits were timed
    timing: str = ""  # how the exits were timed, in words (interleaving, rounds)
    # [i][j]: validation images exits[i] classifies correctly and exits[j] does not. What a paired
    # comparison of two exits needs (select.confidence); empty in scores written before it.
    val_right_where_wrong: tuple[tuple[int, ...], ...] = ()

    def get(self, name: str) -> ExitScore:
        """An exit by name ("exit_03"), or the full model ("full")."""
        if name == self.full_model.name:
            return self.full_model
        for score in self.exits:
            if score.name == name:
                return score
        raise KeyError(f"no exit named {name!r}; exits: {', '.join(s.name for s in self.exits)}")


@dataclass(frozen=True)
class ExitVerdict(Result):
    name: str
    on_front: bool  # Pareto-optimal among all exits (accuracy up, size down, latency down)
    feasible: bool  # meets every select constraint
    violations: tuple[str, ...]
    chosen: bool
    why: str
    # Pareto-optimal among the feasible exits: what the policy chooses from. Differs from
    # on_front only where an infeasible exit (e.g. over max_params) dominates a feasible one.
    on_feasible_front: bool = False


@dataclass(frozen=True)
class Selection(Result):
    chosen: str
    unit: int
    policy: str
    reason: str
    verdicts: tuple[ExitVerdict, ...]
    vs_full: dict[str, float | None]  # param_reduction, size_reduction, throughput_gain_b1, ...
    latency_batch_size: int | None = None  # whose p50 was the latency objective
    constraints: dict[str, float | None] = field(default_factory=dict)  # select.* limits applied
    latency_format: str = "fp32"  # whose latency (FP32 or INT8 graph) the front and constraints used
    latency_rule: str = ""  # when two latencies count as tied, in words

    def verdict(self, name: str) -> ExitVerdict:
        for verdict in self.verdicts:
            if verdict.name == name:
                return verdict
        raise KeyError(f"no verdict for {name!r}; exits: {', '.join(v.name for v in self.verdicts)}")


@dataclass(frozen=True)
class FormatLatency(Result):
    """One deliverable file timed on the bench backend in the build."""

    format: str  # fp32 | int8 | ort
    file: str  # relative to the run folder
    bytes: int
    latency: tuple[Latency, ...]  # batch 1 and the recipe's batch sizes
    test_accuracy: float | None  # from its validation against PyTorch on the test split


@dataclass(frozen=True)
class DeliverableLatency(Result):
    """The chosen exit's deliverables timed side by side (interleaved rounds) on this machine."""

    backend: str
    runner: str
    source: str  # how it was measured, in words
    formats: tuple[FormatLatency, ...]
    load: MachineLoad
    int8_speedup: dict[str, float] = field(default_factory=dict)  # "b1": fp32 p50 / int8 p50

    def get(self, fmt: str) -> FormatLatency | None:
        return next((f for f in self.formats if f.format == fmt), None)


# --------------------------------------------------------------------------- prune


@dataclass(frozen=True)
class PruneOutcome(Result):
    """One pruning method run from the shared starting weights to its final sparse model."""

    method: str  # drive | magnitude | snip | synflow
    sparsity_target: float
    sparsity_reached: float  # zeros among the prunable weights (conv + linear), counted
    accuracy: float  # test split
    seconds: float  # wall time of the whole method: dense training, scoring, pruning, retraining
    cpu_seconds: float | None = None  # CPU time of the same work (steadier on a shared machine)
    epochs: int = 0  # training epochs it spent (magnitude pruning retrains every round)
    samples_processed: int = 0  # forward+backward sample passes (training and scoring): cost in work
    prunable_weights: int = 0
    zero_weights: int = 0
    val_accuracy: float | None = None
    layer_sparsity: dict[str, float] = field(default_factory=dict)  # per weight: global ranking is uneven


@dataclass(frozen=True)
class PruneResult(Result):
    method: str
    target: str  # which model was pruned: the chosen exit or the whole model
    accuracy_before: float  # test split, the model as handed to the prune stage
    outcome: PruneOutcome
    baselines: tuple[PruneOutcome, ...]  # other methods, same sparsity, same starting weights
    checkpoint: str | None = None  # relative to the run folder; set by whoever writes the file
    compressed_bytes: int | None = None  # the pruned ONNX, deflated (zip): zeros compress
    dense_compressed_bytes: int | None = None  # the same export before pruning, deflated

    def baseline(self, method: str) -> PruneOutcome:
        return next(o for o in (self.outcome, *self.baselines) if o.method == method)

    def seconds_ratio(self, method: str, cpu: bool = False) -> float | None:
        """How many times longer ``method`` took than the chosen method, in this run (wall time,
        or CPU time with ``cpu``; None where CPU time was not measured)."""
        other, chosen = self.baseline(method), self.outcome
        if cpu:
            if other.cpu_seconds is None or chosen.cpu_seconds is None:
                return None
            return other.cpu_seconds / chosen.cpu_seconds
        return other.seconds / chosen.seconds

    def work_ratio(self, method: str) -> float:
        """``method``'s forward+backward sample passes over the chosen method's."""
        return self.baseline(method).samples_processed / self.outcome.samples_processed


# --------------------------------------------------------------------------- export / validate


@dataclass(frozen=True)
class OnnxExport(Result):
    path: str  # relative to the run folder
    exporter: str  # "dynamo" | "torchscript"
    opset: int
    input_name: str
    output_name: str
    input_shape: tuple[Any, ...]  # "batch" for the dynamic dimension
    output_shape: tuple[Any, ...]
    bytes: int
    sha256: str
    simplified: bool
    simplify_note: str  # why it was or was not kept


@dataclass(frozen=True)
class OrtExport(Result):
    """model.ort: ONNX Runtime's own format (for ONNX Runtime Mobile), converted by its own tool."""

    path: str  # relative to the run folder
    source: str  # the ONNX it was converted from
    optimization: str  # the converter's optimization style and level
    bytes: int
    sha256: str
    mobile_check: str  # file holding ONNX Runtime's mobile usability report, relative to the run folder
    nnapi_or_coreml_may_help: bool  # the checker's verdict: try NNAPI/CoreML rather than the CPU EP


@dataclass(frozen=True)
class Comparison(Result):
    """Measured agreement of a candidate runner with the reference, on the same inputs."""

    reference: str
    candidate: str
    samples: int
    max_abs_error: float
    max_rel_error: float
    mean_abs_error: float
    cosine: float
    atol: float
    rtol: float
    within_tolerance: float  # fraction of output elements with |a-b| <= atol + rtol*|b|
    top1_agreement: float
    reference_accuracy: float | None
    candidate_accuracy: float | None


@dataclass(frozen=True)
class GateCheck(Result):
    """One measured number judged against one recipe limit."""

    name: str  # the number, e.g. "fp32.max_abs_error"
    value: float | None  # None where it could not be measured (a failed check)
    limit: float | None
    passed: bool
    detail: str = ""  # related figures reported beside it (tolerances, accuracies)
    op: str = ""  # how value must relate to limit: "<=" or ">="
    field: str = ""  # the recipe field that holds the limit, e.g. "validate.max_abs_error"


@dataclass(frozen=True)
class Validation(Result):
    """One format checked against PyTorch: the measurements and the gates judged on them."""

    format: str  # fp32 | int8 | engine
    comparison: Comparison
    checks: tuple[GateCheck, ...]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)


@dataclass(frozen=True)
class QuantResult(Result):
    """The INT8 QDQ model. Its accuracy against PyTorch is a `Comparison` from the validate stage."""

    path: str  # relative to the run folder
    source: str  # the FP32 ONNX it was quantized from, relative to the run folder
    calibration_samples: int  # training-split samples actually used
    calibration_method: str
    per_channel: bool
    symmetric: bool  # activations and weights, zero point 0 (checked on the written graph)
    quantized_tensors: int  # tensors carried in INT8 (one DequantizeLinear each)
    bytes: int
    sha256: str
    activations: str = "int8"  # int8 (symmetric, TensorRT-ready) or uint8 (asymmetric, ONNX Runtime CPU)


@dataclass(frozen=True)
class EngineResult(Result):
    """A serialized TensorRT plan. Its parity with PyTorch is a `Comparison` from the validate stage."""

    path: str  # relative to the run folder
    source: str  # the ONNX it was built from, relative to the run folder
    precision: str
    strongly_typed: bool  # precision from the graph (TensorRT 11; int8 QDQ on 10); else TensorRT 10 flags
    tensorrt_version: str
    gpu: str
    compute_capability: str
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # min, opt, max shapes
    build_seconds: float
    bytes: int
    sha256: str
    timing_cache: str | None  # relative to the run folder


# --------------------------------------------------------------------------- pipeline


@dataclass(frozen=True)
class StageRecord(Result):
    STATUSES: ClassVar[tuple[str, ...]] = ("ok", "failed", "skipped", "reused")

    name: str
    status: str
    reason: str
    seconds: float
    files: tuple[str, ...]
    fingerprint: str
    result: Optional[dict[str, Any]] = None

    def result_as(self, kind: type[T], *, source: str | None = None) -> T | None:
        """The stage's stored result as ``kind`` (validated); None where the stage left none."""
        return None if self.result is None else kind.from_dict(self.result, source=source)


@dataclass(frozen=True)
class Artifact(Result):
    """The finished bundle: where it is and what is in it."""

    path: str
    recipe_name: str
    run_id: str
    chosen_exit: str | None
    files: tuple[str, ...]
    manifest_sha256: str
