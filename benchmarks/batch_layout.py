"""A lever measured and not taken: channels_last (NHWC) batches on the CPU, against NCHW, interleaved.

    python -m benchmarks.batch_layout

1. Speed. Every unit's real NeuroFlux local step (`learning.local_step`: unit + a two-conv head of
   32 filters, forward, loss, backward, SGD step) on three setups at the batch sizes their plans
   give, with 1 and 2 torch threads, in three layouts: NCHW batch and weights (what nfcompile
   trains with); NHWC batch; NHWC batch and weights. Each unit's variants run in turn, 8 timed
   steps each after 2 warm-up steps.
2. Safety. The weight gradient of a 1x1 stride-2 convolution (a ResNet downsample) with fewer input
   channels than oneDNN's channel block, on an NHWC batch and, as the control, on an NCHW one, each
   in its own process (it may crash): oneDNN issue 6035 reports that this case writes past its
   workspace (crashes, hangs or wrong gradients, by machine). The tests' ResNet-18 at width 0.125
   has such a convolution (8 input channels); this machine's oneDNN blocks channels by 16 (AVX-512).

Why nfcompile keeps NCHW: NHWC was faster (part 1), but its failure is silent on some machines
(wrong gradients) and depends on the instruction set, the channel counts and the thread count, so
no guard on shapes could be trusted. Writes `benchmarks/results/<date>-batch-layout.json`
(`-2`, `-3`... when taken).
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.results import RESULTS_DIR, machine_fingerprint, unused_path
from nfcompile.core.io import write_json

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("nchw", "nhwc batch", "nhwc batch and weights")
# (name, recipe overrides on the quickstart, image side, each unit's batch size as its plan gives it)
SETUPS = (
    ("quickstart ResNet-18 (width 0.5, 16 px)", [], 16, [154] * 4 + [254] * 4 + [512]),
    ("Fashion-MNIST ResNet-18 (width 0.25, 28 px)", ["model.width=0.25"], 28, [16, 35, 35, 62, 62, 100, 100, 100, 100]),
    ("Fashion-MNIST VGG-16-BN (width 0.25, 32 px)", ["model.width=0.25", "model.arch=vgg16_bn"], 32,
     [18, 35, 35, 65, 65, 100, 100, 100] + [128] * 5),
)
WARMUP_STEPS, TIMED_STEPS = 2, 8


def unit_steps(overrides: list[str], image_size: int, batches: list[int], threads: int) -> dict:
    from nfcompile.learning import local_step, make_optimizer
    from nfcompile.models import build_unit_net
    from nfcompile.models.build import unit_shapes_for
    from nfcompile.models.heads import AuxHead
    from nfcompile.recipe.load import load_recipe, with_overrides

    torch.set_num_threads(threads)
    recipe = with_overrides(load_recipe(REPO / "recipes/quickstart.yaml"), overrides)
    net = build_unit_net(recipe.model, 10)
    seconds = dict.fromkeys(VARIANTS, 0.0)
    cpu = dict.fromkeys(VARIANTS, 0.0)
    for unit, (in_shape, out_shape), batch in zip(net.units, unit_shapes_for(net, image_size), batches):
        head = AuxHead(out_shape[0], 32, 10, depth=2)
        runs = {}
        for variant in VARIANTS:
            u, h = copy.deepcopy(unit).train(), copy.deepcopy(head).train()
            if variant == "nhwc batch and weights":
                u, h = u.to(memory_format=torch.channels_last), h.to(memory_format=torch.channels_last)
            x = torch.randn(batch, *in_shape)
            if variant != "nchw":
                x = x.contiguous(memory_format=torch.channels_last)
            optimizer = make_optimizer([*u.parameters(), *h.parameters()], recipe.train, batch)
            runs[variant] = (u, h, x, torch.randint(0, 10, (batch,)), optimizer)
        for args in runs.values():
            for _ in range(WARMUP_STEPS):
                local_step(*args)
        for _ in range(TIMED_STEPS):
            for variant, args in runs.items():
                started, cpu_started = time.perf_counter(), time.process_time()
                local_step(*args)
                seconds[variant] += time.perf_counter() - started
                cpu[variant] += time.process_time() - cpu_started
    return {"seconds": seconds, "cpu_seconds": cpu,
            "nchw / nhwc batch": seconds["nchw"] / seconds["nhwc batch"],
            "nchw / nhwc batch and weights": seconds["nchw"] / seconds["nhwc batch and weights"]}


CRASH_CHECK = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
layout = torch.channels_last if sys.argv[2] == "nhwc" else torch.contiguous_format
worst = 0.0
for seed in range(20):
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(8, 16, kernel_size=1, stride=2, bias=False)
    x = torch.randn(69, 8, 16, 16)
    conv(x.contiguous(memory_format=layout)).sum().backward()
    # The reference: the same gradient in float64, computed outside oneDNN's kernels.
    reference = torch.einsum("nchw->c", x[:, :, ::2, ::2].double()).expand(16, 8).reshape(16, 8, 1, 1)
    worst = max(worst, float((conv.weight.grad.double() - reference).abs().max() / reference.abs().max()))
print(worst)
"""


def crash_check(threads: int, layout: str) -> dict:
    """20 weight gradients of the downsample case in a fresh process: its exit code (-11: SIGSEGV, -6:
    abort on heap corruption) and, when it finished, the worst relative error against float64."""
    try:
        done = subprocess.run([sys.executable, "-c", CRASH_CHECK, str(threads), layout], capture_output=True,
                              text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return {"threads": threads, "layout": layout, "exit_code": None, "outcome": "hung (killed after 300 s)"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        outcome = f"crashed (exit code {done.returncode}): {' '.join(done.stderr.strip().splitlines()[-1:])}"
        return {"threads": threads, "layout": layout, "exit_code": done.returncode, "outcome": outcome}
    error = float(lines[-1])
    return {"threads": threads, "layout": layout, "exit_code": 0, "worst_relative_error": error,
            "outcome": f"finished, weight gradient within {error:.1e} of float64"}


def _onednn_version() -> str:
    """torch's build configuration names the oneDNN it links ("Intel(R) MKL-DNN v3.12.0 (Git Hash ...)")."""
    line = next((l for l in torch.__config__.show().splitlines() if "MKL-DNN" in l or "oneDNN" in l), "")
    return line.strip(" -")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch_layout", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    started = datetime.now(timezone.utc)
    load_at_start = list(os.getloadavg())
    threads_before = torch.get_num_threads()
    units = []
    for threads in (1, 2):
        for name, overrides, image_size, batches in SETUPS:
            units.append({"setup": name, "threads": threads, "batch_sizes": batches,
                          **unit_steps(overrides, image_size, batches, threads)})
            print(f"{name}, {threads} thread(s): NCHW / NHWC batch {units[-1]['nchw / nhwc batch']:.3f}x, "
                  f"NCHW / NHWC batch and weights {units[-1]['nchw / nhwc batch and weights']:.3f}x",
                  file=sys.stderr, flush=True)
    torch.set_num_threads(threads_before)
    crashes = [crash_check(threads, layout) for threads in (1, 2) for layout in ("nchw", "nhwc")]
    document = {"format": "nfcompile.batch_layout/1", "cpu_count": os.cpu_count(),
                "machine": machine_fingerprint(torch.device("cpu")),
                "torch": torch.__version__, "onednn": _onednn_version(),
                "date": started.isoformat(timespec="seconds"), "load_at_start": load_at_start,
                "load_at_end": list(os.getloadavg()),
                "command": " ".join(["python -m benchmarks.batch_layout", *(argv or sys.argv[1:])]),
                "unit_steps": units, "crash_check": crashes}
    path = write_json(unused_path(RESULTS_DIR, f"{started:%Y-%m-%d}-batch-layout"), document)
    print(path)
    for check in crashes:
        print(f"1x1 stride-2 conv, 8 input channels, {check['layout']}, {check['threads']} thread(s): "
              f"{check['outcome']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
