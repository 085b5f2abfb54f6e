"""TensorRT: an engine from an ONNX file with the Python API, and a runner for engines.

TensorRT 10 and 11 differ in how precision is chosen. TensorRT 11 builds strongly typed networks
only: every tensor keeps the type the graph gives it, so fp16 needs an FP16 ONNX (converted here
with onnxconverter-common, inputs and outputs kept FP32) and int8 needs the QDQ ONNX. TensorRT 10
still takes the precision flag `BuilderFlag.FP16` on the FP32 graph; for the QDQ graph it is built
strongly typed as well, as TensorRT's explicit-quantization guide recommends. fp32 turns TF32 off,
so an "fp32" engine really computes in FP32.

The engine file is a plain serialized plan (no header), loadable by trtexec and any TensorRT
program. Plans load only on the TensorRT version and GPU that built them: `BuildFingerprint`
records both. `import nfcompile` never imports tensorrt; a missing tensorrt or CUDA is a
`StageSkipped` with the reason.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nfcompile.core.io import write_bytes
from nfcompile.core.log import get_logger
from nfcompile.errors import InputError, NfcompileError, StageSkipped
from nfcompile.runtime.base import Runner

log = get_logger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
Shape = tuple[int, ...]


class TensorRTError(NfcompileError):
    """TensorRT refused the model or the engine (parser, builder or runtime errors, quoted)."""


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT cannot run here ("tensorrt not installed", "CUDA not available"), or None."""
    try:
        import tensorrt  # noqa: F401
    except ModuleNotFoundError:
        return "tensorrt not installed"
    except Exception as exc:  # installed but broken: missing libnvinfer, wrong CUDA...
        text = str(exc).strip().splitlines()
        return f"tensorrt does not import ({text[0] if text else type(exc).__name__})"
    import torch

    if not torch.cuda.is_available():
        return "CUDA not available"
    return None


def _require_tensorrt() -> None:
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise StageSkipped(reason)


@dataclass(frozen=True)
class BuildFingerprint:
    """What an engine is bound to: it loads only with this TensorRT on this kind of GPU."""

    tensorrt_version: str
    gpu: str
    compute_capability: str


def build_fingerprint() -> BuildFingerprint:
    """The TensorRT version and the current CUDA device (raises StageSkipped where either is missing)."""
    _require_tensorrt()
    import tensorrt as trt
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return BuildFingerprint(trt.__version__, props.name, f"{props.major}.{props.minor}")


@dataclass(frozen=True)
class EngineBuild:
    path: Path
    onnx_path: Path
    precision: str
    strongly_typed: bool
    fingerprint: BuildFingerprint
    input_name: str
    profile: tuple[Shape, Shape, Shape]  # min, opt, max input shapes
    workspace_bytes: int
    timing_cache: Path | None
    build_seconds: float
    bytes: int


def engine_from_onnx(onnx_path: str | Path, engine_path: str | Path, *, precision: str, min_shape: Shape,
                     opt_shape: Shape, max_shape: Shape, workspace_bytes: int,
                     timing_cache: str | Path | None = None) -> EngineBuild:
    """Build a TensorRT plan from ``onnx_path`` and write it to ``engine_path`` (atomically).

    ``precision`` is fp32, fp16 (from the FP32 ONNX) or int8 (``onnx_path`` must be the QDQ model).
    The shapes are full input shapes (batch first) of one optimization profile. ``timing_cache``,
    when given, is read if it exists and written back with this build's timings, so a rebuild on
    the same device skips most tactic timing.
    """
    _require_tensorrt()
    import tensorrt as trt

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    major = int(trt.__version__.split(".")[0])
    strongly_typed = major >= 11 or precision == "int8"
    graph = _onnx_for_precision(onnx_path, precision, strongly_typed)

    logger = _logger()
    logger.errors.clear()
    builder = trt.Builder(logger)
    # TensorRT 11 is always strongly typed and deprecates the flag; 10 needs it asked for.
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed and major < 11 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(graph):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors
        raise TensorRTError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse this ONNX "
                            f"({len(errors)} error(s)); first: {errors[0] if errors else 'no message'}",
                            hint="check the export.opset against TensorRT's supported opsets")
    input_name = _check_profile(network, onnx_path, (min_shape, opt_shape, max_shape))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, tuple(min_shape), tuple(opt_shape), tuple(max_shape))
    config.add_optimization_profile(profile)
    if precision == "fp16" and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    _attach_timing_cache(config, cache_path)

    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if plan is None or plan.nbytes == 0:
        first = logger.errors[0] if logger.errors else "see the TensorRT messages above"
        raise TensorRTError(f"TensorRT {trt.__version__} could not build a {precision} engine from "
                            f"{onnx_path.name}: {first}",
                            hint="a larger tensorrt.workspace or another tensorrt.precision may help")
    write_bytes(engine_path, bytes(memoryview(plan)))
    if cache_path is not None:
        write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    log.info("tensorrt: %s engine built in %.1fs (%s)", precision, seconds, engine_path.name)
    return EngineBuild(path=engine_path, onnx_path=onnx_path, precision=precision, strongly_typed=strongly_typed,
                       fingerprint=build_fingerprint(), input_name=input_name,
                       profile=(tuple(min_shape), tuple(opt_shape), tuple(max_shape)),
                       workspace_bytes=int(workspace_bytes), timing_cache=cache_path, build_seconds=seconds,
                       bytes=engine_path.stat().st_size)


def _onnx_for_precision(onnx_path: Path, precision: str, strongly_typed: bool) -> bytes:
    """The serialized graph TensorRT parses: as is, or converted to FP16 for a strongly typed fp16 build."""
    import onnx

    if not onnx_path.is_file():
        raise InputError(f"{onnx_path}: ONNX file not found")
    model = onnx.load(str(onnx_path))
    has_qdq = any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    if precision == "int8" and not has_qdq:
        raise InputError(f"{onnx_path.name}: precision int8 builds from the QDQ model, and this graph has no "
                         "QuantizeLinear", hint="pass model.int8.onnx (quantize.enabled: true)")
    if precision != "int8" and has_qdq:
        raise InputError(f"{onnx_path.name} is a QDQ (INT8) model; precision {precision} builds from the "
                         "FP32 ONNX", hint="pass model.onnx, or set tensorrt.precision: int8")
    if precision == "fp16" and strongly_typed:
        model = fp16_onnx_from_fp32(model)
    return model.SerializeToString()


def fp16_onnx_from_fp32(model: Any) -> Any:
    """The same graph in FP16 (inputs and outputs stay FP32, so callers feed and read float32)."""
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise StageSkipped("onnxconverter-common not installed: TensorRT 11 builds fp16 engines from an "
                           "FP16 ONNX (pip install 'nfcompile[tensorrt]')") from None
    return float16.convert_float_to_float16(model, keep_io_types=True)


def _check_profile(network: Any, onnx_path: Path, shapes: tuple[Shape, Shape, Shape]) -> str:
    """The network's single input name, after checking the profile shapes fit it."""
    if network.num_inputs != 1:
        raise InputError(f"{onnx_path.name}: expected one input, the network has {network.num_inputs}")
    tensor = network.get_input(0)
    dims = tuple(tensor.shape)
    min_shape, opt_shape, max_shape = shapes
    for shape in shapes:
        fits = len(shape) == len(dims) and all(d in (-1, s) for d, s in zip(dims[1:], shape[1:]))
        if not fits:
            raise InputError(f"{onnx_path.name}: profile shape {tuple(shape)} does not fit the input "
                             f"{tensor.name} of shape {dims}")
    if not min_shape[0] <= opt_shape[0] <= max_shape[0] or min_shape[0] < 1:
        raise InputError(f"profile batches must satisfy 1 <= min <= opt <= max, got "
                         f"{min_shape[0]}, {opt_shape[0]}, {max_shape[0]}")
    if dims[0] != -1 and {min_shape[0], opt_shape[0], max_shape[0]} != {dims[0]}:
        raise InputError(f"{onnx_path.name} has a fixed batch of {dims[0]}; the profile asks for "
                         f"{min_shape[0]}..{max_shape[0]}", hint="export with export.dynamic_batch: true")
    return tensor.name


def _attach_timing_cache(config: Any, cache_path: Path | None) -> None:
    data = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        # A cache from another TensorRT version or GPU does not apply: start an empty one.
        log.warning("tensorrt: ignoring timing cache %s: made by another TensorRT or GPU", cache_path)
        config.set_timing_cache(config.create_timing_cache(b""), False)


@functools.lru_cache(maxsize=1)
def _logger() -> Any:
    """One logger for the process (TensorRT keeps the first one it is given); errors are kept for messages."""
    import tensorrt as trt

    severity = trt.ILogger.Severity

    class ForwardingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, level: Any, message: str) -> None:
            if level in (severity.INTERNAL_ERROR, severity.ERROR):
                self.errors.append(message)
                log.error("tensorrt: %s", message)
            elif level == severity.WARNING:
                log.warning("tensorrt: %s", message)
            else:
                log.debug("tensorrt: %s", message)

    return ForwardingLogger()


@dataclass(frozen=True)
class TrtInferTiming:
    """One `TrtRunner.infer`, split by CUDA events recorded on its stream: host-to-device copies, the
    engine's own execution, device-to-host copies (milliseconds)."""

    host_to_device_ms: float
    engine_ms: float
    device_to_host_ms: float


class TrtRunner(Runner):
    """Runs a serialized plan: CUDA buffers are torch tensors, execution is `execute_async_v3` on a stream.

    Latency measured around `infer` (what `nfcompile bench` reports for TensorRT) is the wall time a
    caller with host arrays sees: copies included. CUDA events recorded on the stream split every call
    into copies and the engine's own time (`last_timing`), which is what TensorRT's own tools report.
    """

    def __init__(self, engine_path: str | Path):
        super().__init__()
        self.engine_path = Path(engine_path)
        self.name = f"tensorrt {self.engine_path.name}"
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._device: Any = None
        self._inputs: list[str] = []
        self._outputs: list[str] = []
        self.last_timing: TrtInferTiming | None = None

    def activate_impl(self) -> None:
        _require_tensorrt()
        import tensorrt as trt
        import torch

        if not self.engine_path.is_file():
            raise InputError(f"{self.engine_path}: engine file not found")
        runtime = trt.Runtime(_logger())
        engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if engine is None:
            raise TensorRTError(f"{self.engine_path}: TensorRT {trt.__version__} cannot load this engine; "
                                "plans load only on the TensorRT version and GPU that built them",
                                hint="rebuild it here from the bundle's ONNX: nfcompile engine ARTIFACT")
        context = engine.create_execution_context()
        if context is None:
            raise TensorRTError(f"{self.engine_path}: TensorRT could not create an execution context "
                                "(out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        # The runtime must outlive the engine it deserialized, and the engine its context.
        self._runtime, self._engine, self._context = runtime, engine, context
        self._device = torch.device("cuda", torch.cuda.current_device())
        self._stream = torch.cuda.Stream(device=self._device)

    def deactivate_impl(self) -> None:
        self._context = None
        self._engine = None
        self._runtime = None
        self._stream = None

    @property
    def input_names(self) -> list[str]:
        self._require_active()
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        self._require_active()
        return list(self._outputs)

    @property
    def batch_range(self) -> tuple[int, int]:
        """Smallest and largest batch of the engine's optimization profile."""
        self._require_active()
        smallest, _, largest = self._engine.get_tensor_profile_shape(self._inputs[0], 0)
        return int(smallest[0]), int(largest[0])

    def _require_active(self) -> None:
        if self._engine is None:
            raise RuntimeError(f"{self.name}: not active")

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        missing = [name for name in self._inputs if name not in feed]
        if missing:
            raise KeyError(f"{self.name}: no value for input(s) {missing}")
        outputs = {}
        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            events[0].record(self._stream)
            inputs = []  # keeps the input buffers alive until execution has finished
            for name in self._inputs:
                dtype = torch_dtype(self._engine.get_tensor_dtype(name))
                tensor = torch.from_numpy(np.ascontiguousarray(feed[name])).to(self._device, dtype=dtype)
                if not self._context.set_input_shape(name, tuple(tensor.shape)):
                    smallest, largest = self.batch_range
                    raise InputError(f"{self.name}: input {name} of shape {tuple(tensor.shape)} is outside the "
                                     f"engine's optimization profile (batch {smallest}..{largest})",
                                     hint="rebuild with other tensorrt.min_batch/max_batch")
                self._context.set_tensor_address(name, tensor.data_ptr())
                inputs.append(tensor)
            for name in self._outputs:
                shape = tuple(self._context.get_tensor_shape(name))
                output = torch.empty(shape, dtype=torch_dtype(self._engine.get_tensor_dtype(name)),
                                     device=self._device)
                self._context.set_tensor_address(name, output.data_ptr())
                outputs[name] = output
            events[1].record(self._stream)
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise TensorRTError(f"{self.name}: execution failed (see the TensorRT messages above)")
            events[2].record(self._stream)
            host = {name: output.float().to("cpu", non_blocking=False) for name, output in outputs.items()}
            events[3].record(self._stream)
            self._stream.synchronize()
        self.last_timing = TrtInferTiming(events[0].elapsed_time(events[1]), events[1].elapsed_time(events[2]),
                                          events[2].elapsed_time(events[3]))
        return {name: tensor.numpy() for name, tensor in host.items()}


def torch_dtype(trt_dtype: Any) -> Any:
    """The torch dtype of a TensorRT I/O tensor type."""
    import tensorrt as trt
    import torch

    names = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
             "UINT8": torch.uint8, "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool}
    for name, dtype in names.items():
        if getattr(trt.DataType, name, None) == trt_dtype:
            return dtype
    raise TensorRTError(f"TensorRT I/O type {trt_dtype} has no torch equivalent here")
