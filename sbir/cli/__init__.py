"""The `sbir` command line: one front door for every workload, and its one error path.

Commands raise project errors (:class:`sbir.errors.SbirError`); :func:`main` prints any of them as one
line on stderr and exits with its code (1: the input or environment, 2: the command line or config).
Anything else is a bug and keeps its traceback. ``--debug`` shows the traceback of project errors too.
This package is the only part of ``sbir`` that imports the app layer (``pipelines``), and only inside
the commands that need it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer
import typer.core

from sbir.cli.common import ConfigOption, Overrides, config_from
from sbir.cli.data import data_app
from sbir.cli.infra import infra_app
from sbir.cli.run import evaluate, train
from sbir.cli.serving import index_app, query, serve_command
from sbir.cli.tuning import tune_command
from sbir.config import dump_config
from sbir.errors import project_error

_options = {"debug": False}


class _ProjectErrorsAsOneLine(typer.core.TyperGroup):
    """The root command group: every project error raised below it becomes one line and its exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            typer.secho("interrupted", fg=typer.colors.RED, err=True)
            raise typer.Exit(130) from None
        except Exception as exc:
            error = project_error(exc)
            if error is None or _options["debug"]:
                raise
            typer.secho(f"error: {one_line(str(error))}", fg=typer.colors.RED, err=True)
            raise typer.Exit(error.exit_code) from None


app = typer.Typer(
    help="Zero-shot sketch-based image retrieval (ZSE-SBIR, CLIP-AT) on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: Typer's rich panels print every flag as "<bool>"
    cls=_ProjectErrorsAsOneLine,
)
config_app = typer.Typer(help="Inspect and validate configurations.", no_args_is_help=True, rich_markup_mode=None)
model_app = typer.Typer(
    help="Build models, inspect them and convert released weights.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(config_app, name="config")
app.add_typer(model_app, name="model")
app.add_typer(data_app, name="data")
app.command("train")(train)
app.command("eval")(evaluate)
app.command("tune")(tune_command)
app.add_typer(index_app, name="index")
app.command("serve")(serve_command)
app.command("query")(query)
app.add_typer(infra_app, name="infra")


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging, third-party logs included")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="show the traceback of every error")] = False,
) -> None:
    _options["debug"] = debug
    # The project's loggers at INFO; third-party libraries (open_clip logs to the root logger) and Ray's own
    # output (pipelines.ray_runtime reads SBIR_VERBOSE) only with -v.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    for name in ("sbir", "pipelines", "tune", "serve", "infra"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
    if verbose:
        os.environ["SBIR_VERBOSE"] = "1"


@config_app.command("show")
def config_show(config: ConfigOption = None, overrides: Overrides = None) -> None:
    """Print the fully resolved configuration as YAML."""
    typer.echo(dump_config(config_from(config, overrides)), nl=False)


@config_app.command("presets")
def config_presets() -> None:
    """List the built-in configuration presets."""
    from sbir.presets import available_presets

    for name in available_presets():
        typer.echo(name)


@model_app.command("info")
def model_info(config: ConfigOption = None, overrides: Overrides = None) -> None:
    """Build the configured model (no pretrained weights) and print its parameter counts."""
    from sbir.methods import family_of

    cfg = config_from(config, overrides)
    model = family_of(cfg).build_model(cfg.model, load_pretrained=False)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    typer.echo(f"method: {cfg.model.method}\nparameters: {total:,}\ntrainable: {trainable:,}")


@model_app.command("convert-official")
def model_convert_official(
    checkpoint: Annotated[Path, typer.Argument(help="the released best_checkpoint.pth")],
    out: Annotated[Path, typer.Option("--out", help="output checkpoint directory")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a checkpoint already in --out")] = False,
    config: ConfigOption = None,
    overrides: Overrides = None,
) -> None:
    """Load the authors' released checkpoint strictly and save it in the project's format."""
    from sbir.checkpoint import save_checkpoint
    from sbir.files import check_output
    from sbir.methods import family_of

    cfg = config_from(config, overrides)
    check_output(out, want="folder", overwrite=overwrite, option="--out")
    family = family_of(cfg)
    model = family.build_model(cfg.model, load_pretrained=False)
    info = family.load_release_checkpoint(model, str(checkpoint))
    release = {f"release_{key}": value for key, value in info.items()}
    save_checkpoint(out, model, cfg, extra={"source": str(checkpoint), **release})
    typer.echo(f"wrote {out}" + (f" (release {', '.join(f'{k}={v}' for k, v in info.items())})" if info else ""))


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="where reports and checkpoints go")] = Path("demo_out"),
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Run the end-to-end demo on the built-in synthetic dataset (no downloads): train, then serve."""
    import time

    from pipelines.demo import run_demo
    from serve.demo import serve_champion

    started = time.perf_counter()
    serve_champion(run_demo(out, seed=seed, echo=typer.echo), echo=typer.echo)
    typer.echo(f"total time: {time.perf_counter() - started:.0f} s")


RAY_SHUTDOWN_TIMEOUT_S = 15.0


def main() -> None:
    """Entry point of the `sbir` script (and of `python -m sbir.cli`)."""
    code: int | str | None = 0
    try:
        app(prog_name="sbir")
    except SystemExit as done:
        code = done.code
        raise
    finally:
        _shut_down_ray(code)


def _shut_down_ray(code: int | str | None) -> None:
    """Shut down the Ray this process connected to now rather than in Ray's atexit hook: a Ctrl-C during it is
    absorbed instead of printing "Exception ignored in atexit callback", and daemons that are already gone
    (SIGTERM to the whole process group) cannot hang the exit: after RAY_SHUTDOWN_TIMEOUT_S it exits anyway.
    What a local cluster leaves behind is reaped by its watcher (``pipelines/reaper.py``) once we exit."""
    import signal
    import sys
    import threading

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
    worker = threading.Thread(target=ray.shutdown, name="ray-shutdown", daemon=True)
    worker.start()
    worker.join(RAY_SHUTDOWN_TIMEOUT_S)
    if worker.is_alive():
        typer.secho(f"Ray did not shut down within {RAY_SHUTDOWN_TIMEOUT_S:.0f} s; exiting", fg="yellow", err=True)
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def one_line(message: str) -> str:
    """A message on one line: its lines joined with '; ' (config errors list one key per line)."""
    parts = [part.strip() for part in message.splitlines() if part.strip()]
    return "; ".join(parts).replace(":;", ":")
