"""The `nfcompile` command: click only. Every command is one call into `nfcompile.api`.

Exit codes: 0 success, 2 bad recipe or input, 3 a failed gate (validation, constraints,
latency), 1 anything else. User errors print one line on stderr, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from nfcompile import __version__
from nfcompile.errors import GateFailed, NfcompileError
from nfcompile.formats import onnx_runtime_formats
from nfcompile.runtime.backends import list_backends

# readable=False: a file that cannot be read is reported by nfcompile in one `error:` line naming the
# cause, not by click as a usage error.
INPUT_PATH = click.Path(path_type=Path, readable=False)
class PositiveFinite(click.ParamType):
    """A gate's limit: a finite number above 0. click's FloatRange lets `nan` through (every comparison
    with NaN is false, so a NaN limit is one no model fails) and `inf` (one no model reaches)."""

    name = "positive number"

    def convert(self, value, param, ctx):
        import math

        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number <= 0:
            self.fail(f"{value!r} is not a finite number above 0", param, ctx)
        return number


GATE_VALUE = PositiveFinite()
RECIPE = click.argument("recipe", type=INPUT_PATH)
ARTIFACT = click.argument("artifact", type=INPUT_PATH)
SET = click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
                   help="Override a recipe field, e.g. --set train.epochs=2 (repeatable; typed by the schema).")
JSON = click.option("--json", "as_json", is_flag=True, help="Print one machine-readable JSON document on stdout.")
OUT = click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("artifacts"),
                   show_default=True, help="Folder that receives <recipe-name>/<run-id>/.")
RESUME = click.option("--resume", is_flag=True,
                      help="Continue the latest unfinished run of this recipe: finished stages and blocks "
                      "are reused when the recipe fields they depend on, and the stage's version, are unchanged.")
RUN = click.option("--run", "run_dir", type=click.Path(path_type=Path), default=None,
                   help="Use this run folder instead of the latest run of the recipe.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="nfcompile")
@click.option("-v", "--verbose", count=True, help="More log output (debug).")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only; no progress bars.")
def cli(verbose: int, quiet: bool) -> None:
    """Train a CNN under a memory budget with NeuroFlux and ship a validated edge model.

    \b
    Start here:   nfcompile build recipes/quickstart.yaml
    Then:         nfcompile verify artifacts/quickstart/<run-id>
    """
    from nfcompile.core.log import setup_logging

    setup_logging(verbose, quiet)


@cli.command()
@RECIPE
@SET
@OUT
@RESUME
@RUN
@JSON
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train data-parallel on this many processes on this machine (one per GPU, or CPU "
              "processes): the same as `torchrun --standalone --nproc-per-node N -m nfcompile build ...`.")
def build(recipe: Path, overrides: tuple[str, ...], out_dir: Path, resume: bool, run_dir: Path | None,
          as_json: bool, nproc: int) -> None:
    """Recipe to deployable bundle: plan, train, score exits, select, prune, export, validate, INT8,
    TensorRT, bundle."""
    from nfcompile import api, present
    from nfcompile.core import distributed

    if nproc > 1 and not distributed.launched():
        sys.exit(distributed.launch_local(nproc, _without_nproc(sys.argv[1:])))
    built = api.build(recipe, overrides, out_dir=out_dir, resume=resume, run_dir=run_dir)
    if built is not None:  # None: a torchrun job's rank other than 0, which writes nothing
        present.show_build(built, as_json=as_json)


def _without_nproc(args: list[str]) -> list[str]:
    """The command line as given, less `--nproc N`: what every process of the job runs."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


@cli.command()
@RECIPE
@SET
@JSON
@click.option("--list-archs", is_flag=True,
              help="Also list what recipes may name: architectures, datasets, bench backends, formats.")
def check(recipe: Path, overrides: tuple[str, ...], as_json: bool, list_archs: bool) -> None:
    """Validate a recipe (schema, architecture, input size, dataset presence) and print it resolved."""
    from nfcompile import api, present

    present.show_check(recipe, api.check(recipe, overrides), api.available() if list_archs else None,
                       as_json=as_json)


@cli.command()
@RECIPE
@SET
@JSON
def plan(recipe: Path, overrides: tuple[str, ...], as_json: bool) -> None:
    """Profile every unit and print the memory plan: blocks, batch sizes, predicted peak vs budget."""
    from nfcompile import api, present

    present.show_plan(api.plan(recipe, overrides), as_json=as_json)


@cli.command()
@RECIPE
@SET
@OUT
@RESUME
@RUN
@JSON
def train(recipe: Path, overrides: tuple[str, ...], out_dir: Path, resume: bool, run_dir: Path | None,
          as_json: bool) -> None:
    """Plan and train (NeuroFlux, backprop or gradient filtering), checkpointing every block."""
    from nfcompile import api, present

    trained = api.train(recipe, overrides, out_dir=out_dir, resume=resume, run_dir=run_dir)
    if trained is not None:  # None: a torchrun job's rank other than 0
        present.show_train(trained, recipe, as_json=as_json)


@cli.command()
@RECIPE
@SET
@OUT
@RUN
@JSON
def select(recipe: Path, overrides: tuple[str, ...], out_dir: Path, run_dir: Path | None, as_json: bool) -> None:
    """Score every exit of a finished training and pick one again, without retraining."""
    from nfcompile import api, present

    present.show_select(api.select(recipe, overrides, out_dir=out_dir, run_dir=run_dir), as_json=as_json)


@cli.command()
@RECIPE
@SET
@OUT
@RUN
@JSON
def export(recipe: Path, overrides: tuple[str, ...], out_dir: Path, run_dir: Path | None, as_json: bool) -> None:
    """Finish a trained run: export, simplify, validate, INT8, TensorRT and the bundle."""
    from nfcompile import api, present

    present.show_build(api.export(recipe, overrides, out_dir=out_dir, run_dir=run_dir), as_json=as_json)


@cli.command()
@ARTIFACT
@click.option("--backend", type=click.Choice(list_backends()), default=None,
              help="Runtime to time; default: the recipe's bench.backend.")
@click.option("--model", "which", type=click.Choice(onnx_runtime_formats()), default="fp32", show_default=True,
              help="Which ONNX of the bundle to time (ONNX Runtime backends).")
@click.option("--batch-size", "batch_sizes", type=click.IntRange(min=1), multiple=True,
              help="Batch sizes to time (repeatable); default: the recipe's bench.batch_sizes.")
@click.option("--warmup", type=click.IntRange(min=0), default=None, help="Untimed runs first.")
@click.option("--repeats", type=click.IntRange(min=3), default=None, help="Timed runs per batch size.")
@click.option("--max-latency-ms", type=GATE_VALUE, default=None,
              help="Exit 3 when the p50 latency at batch 1 (or the smallest batch) is above this.")
@click.option("--emit-table", type=click.Path(path_type=Path), default=None,
              help="Also time every exit in the run's exits/ folder and write a latency table for "
              "bench.table, so exits are scored with this device's numbers.")
@JSON
def bench(artifact: Path, backend: str | None, which: str, batch_sizes: tuple[int, ...], warmup: int | None,
          repeats: int | None, max_latency_ms: float | None, emit_table: Path | None, as_json: bool) -> None:
    """Time a bundle's model on this device; for CI on the target, with --max-latency-ms."""
    from nfcompile import api, present

    run_and_show(lambda: api.bench(artifact, backend=backend, model=which, batch_sizes=batch_sizes, warmup=warmup,
                                   repeats=repeats, max_latency_ms=max_latency_ms, emit_table=emit_table),
                 lambda result: present.show_bench(result, as_json=as_json))


@cli.command()
@ARTIFACT
@click.option("--no-parity", is_flag=True, help="Check hashes only; skip re-running the models.")
@JSON
def verify(artifact: Path, no_parity: bool, as_json: bool) -> None:
    """Check a bundle: every file's sha256 against the manifest, no file missing or extra, and the
    ONNX models still agree with the saved reference outputs."""
    from nfcompile import api, present

    run_and_show(lambda: api.verify(artifact, parity=not no_parity),
                 lambda report: present.show_verify(report, as_json=as_json))


@cli.command()
@ARTIFACT
@click.argument("images", nargs=-1, required=True, type=INPUT_PATH)
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True, help="Labels per image.")
@click.option("--model", "which", type=click.Choice(onnx_runtime_formats()), default="fp32", show_default=True,
              help="Which ONNX of the bundle to run.")
@JSON
def predict(artifact: Path, images: tuple[Path, ...], top_k: int, which: str, as_json: bool) -> None:
    """Classify image files with ONNX Runtime and the bundle's own preprocessing."""
    from nfcompile import api, present

    present.show_predictions(api.predict(artifact, images, top_k=top_k, model=which), as_json=as_json)


@cli.command()
@ARTIFACT
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="Default: the recipe's tensorrt.precision.")
@JSON
def engine(artifact: Path, precision: str | None, as_json: bool) -> None:
    """Rebuild the TensorRT engine on this device from the bundle's ONNX (engines are tied to the
    TensorRT version and GPU that built them)."""
    from nfcompile import api, present

    present.show_engine(api.engine(artifact, precision=precision), as_json=as_json)


def run_and_show(call, show) -> None:
    """Show what a command measured even when a gate fails on it (the table, then the error line)."""
    try:
        result = call()
    except GateFailed as failed:
        if failed.result is not None:
            show(failed.result)
        raise
    show(result)


def main() -> None:
    try:
        code = cli.main(standalone_mode=False)
    except NfcompileError as exc:
        _error_line(str(exc))
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        # click's own usage errors (an unknown option, --top-k 0) are user errors like any other: one
        # line, not the usage block; `--help` shows the usage.
        command = exc.ctx.command_path if isinstance(exc, click.UsageError) and exc.ctx else None
        _error_line(f"{command}: {exc.format_message()}" if command else exc.format_message())
        sys.exit(exc.exit_code if isinstance(exc, click.UsageError) else 2)
    except KeyboardInterrupt:
        click.echo("interrupted: finished stages and blocks are kept; continue with --resume", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug, not a user error: one line here, the whole traceback in a log file
        _report_crash(exc)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _error_line(text: str) -> None:
    from rich.markup import escape

    from nfcompile.core.log import stderr_console
    from nfcompile.errors import one_line

    stderr_console.print(f"[bold red]error:[/] {escape(one_line(text))}", highlight=False, soft_wrap=True)


def _report_crash(exc: Exception) -> None:
    """The last resort: name the command, the exception type and the log holding the traceback."""
    import traceback

    from nfcompile.core.io import write_crash_log

    text = "".join(traceback.format_exception(exc))
    argv = sys.argv[1:]
    command = next((arg for arg in argv if arg in cli.commands), "nfcompile")
    verbose = any(arg in ("-v", "--verbose") or (arg.startswith("-v") and set(arg[1:]) == {"v"})
                  for arg in argv[:argv.index(command)] if command in argv)
    if verbose:
        sys.stderr.write(text)
    where = write_crash_log(f"nfcompile {' '.join(argv)}\n\n{text}")
    logged = f"full traceback in {where}" if where else "the traceback could not be written to a log file"
    _error_line(f"nfcompile {command} failed unexpectedly: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200] if str(exc).strip() else '(no message)'} ({logged}; "
                f"this is a bug, please report it{'' if verbose else ', -v prints the traceback'})")


if __name__ == "__main__":
    main()
