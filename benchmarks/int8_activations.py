"""INT8 activation formats on ONNX Runtime's CPU provider: a bundle's FP32 model against its int8 and uint8
QDQ versions, interleaved.

    python -m benchmarks.int8_activations BUNDLE [--batch-sizes 1 32] [--repeats 300]

BUNDLE is a finished build (`nfcompile build recipes/quickstart.yaml` makes one). Its `model.onnx` is
quantized here twice with the product's own `quantize_int8`, on the calibration samples the build
used (its recipe's training split and seed): int8 activations (signed, symmetric, zero point 0:
TensorRT's format) and uint8 activations (asymmetric: `quantize.activations: uint8`). The three
models are timed together (`runtime.latency.measure_interleaved`, round-robin rounds) with the
machine's load recorded, and each one's top-1 accuracy is measured on the recipe's test split.
Writes `benchmarks/results/<date>-int8-activations.json` (`-2`, `-3`... when taken).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from benchmarks.results import RESULTS_DIR, machine_fingerprint, unused_path
from nfcompile.core.io import read_json, write_json

ACCURACY_BATCH = 256


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8_activations",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args(argv)

    from nfcompile.data import calibration_array, load_data
    from nfcompile.recipe.load import validate_recipe
    from nfcompile.runtime.compare import run_batched
    from nfcompile.runtime.latency import machine_load, measure_interleaved
    from nfcompile.runtime.ort_runner import OrtRunner
    from nfcompile.stages.quantize import quantize_int8

    recipe = validate_recipe(read_json(args.bundle / "state" / "recipe.json")["recipe"],
                             source=str(args.bundle / "state" / "recipe.json"))
    data = load_data(recipe.data, recipe.seed)
    section = recipe.quantize
    calibration = calibration_array(data, section.calibration_samples, recipe.seed)
    test_x, test_y = data.preprocessing.normalize(data.test.images).numpy(), data.test.labels.numpy()
    started = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory(prefix="nfcompile-int8-activations-") as folder:
        models = {"fp32": args.bundle / "model.onnx"}
        for activations in ("int8", "uint8"):
            out = Path(folder) / activations
            out.mkdir()
            result = quantize_int8(models["fp32"], section, calibration_inputs=calibration, out_dir=out,
                                   activations=activations)
            models[f"{activations} activations"] = out / result.path
        runners = {name: OrtRunner(path, threads=recipe.bench.threads) for name, path in models.items()}
        for runner in runners.values():
            runner.activate()
        try:
            accuracy = {name: float(np.mean(run_batched(runner, test_x, ACCURACY_BATCH).argmax(axis=1) == test_y))
                        for name, runner in runners.items()}
            load = machine_load()
            wall, cpu = time.perf_counter(), time.process_time()
            latency = measure_interleaved(runners, tuple(test_x.shape[1:]), tuple(args.batch_sizes),
                                          warmup=recipe.bench.warmup, repeats=args.repeats)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        finally:
            for runner in runners.values():
                runner.deactivate()
        sizes = {name: path.stat().st_size for name, path in models.items()}
    rows = []
    for name in models:
        row = {"model": name, "bytes": sizes[name], "test_accuracy": accuracy[name],
               "latency": [lat.to_dict() for lat in latency[name]]}
        row["fp32_p50_over_this"] = [fp32.p50_ms / lat.p50_ms for fp32, lat in zip(latency["fp32"], latency[name])]
        rows.append(row)
    document = {"format": "nfcompile.int8_activations/1", "bundle": str(args.bundle), "recipe": recipe.name,
                "date": started.isoformat(timespec="seconds"), "cpu_count": os.cpu_count(),
                "machine": machine_fingerprint(torch.device("cpu")), "onnxruntime": onnxruntime.__version__,
                "command": " ".join(["python -m benchmarks.int8_activations", *(argv or sys.argv[1:])]),
                "load": load.to_dict(), "load_average_end": list(os.getloadavg()),
                "timing_wall_seconds": wall, "timing_cpu_seconds": cpu, "threads": recipe.bench.threads,
                "test_samples": int(len(test_y)), "models": rows}
    path = write_json(unused_path(RESULTS_DIR, f"{started:%Y-%m-%d}-int8-activations"), document)
    print(path)
    print(f"load: {load.describe()}; timing took {wall:.1f} s wall, {cpu:.1f} s CPU")
    for row in rows:
        timings = ", ".join(f"batch {lat['batch_size']}: p50 {lat['p50_ms']:.3f} ms ({ratio:.2f}x FP32's speed)"
                            for lat, ratio in zip(row["latency"], row["fp32_p50_over_this"]))
        print(f"{row['model']}: {row['bytes'] / 2**20:.1f} MiB, test accuracy {row['test_accuracy']:.2%}; {timings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
