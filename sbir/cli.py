"""The `sbir` command line: one front door for every workload."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from sbir.cli_data import data_app
from sbir.cli_run import evaluate, train
from sbir.config import ConfigError, dump_config, load_config

app = typer.Typer(help="Zero-shot sketch-based image retrieval (ZSE-SBIR, CLIP-AT) on Ray.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect and validate configurations.", no_args_is_help=True)
model_app = typer.Typer(help="Build models, inspect them and convert released weights.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(model_app, name="model")
app.add_typer(data_app, name="data")
app.command("train")(train)
app.command("eval")(evaluate)

ConfigOption = Annotated[
    str | None, typer.Option("--config", "-c", help="YAML file or built-in preset name (see `sbir config presets`)")
]
Overrides = Annotated[list[str] | None, typer.Argument(help="dotted overrides, e.g. model.zse.size=tiny")]


def _load(config: str | None, overrides: list[str] | None):
    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    # Our own loggers at INFO; third-party libraries (open_clip logs to the root logger) only when -v.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("sbir").setLevel(logging.DEBUG if verbose else logging.INFO)


@config_app.command("show")
def config_show(config: ConfigOption = None, overrides: Overrides = None) -> None:
    """Print the fully resolved configuration as YAML."""
    typer.echo(dump_config(_load(config, overrides)), nl=False)


@config_app.command("presets")
def config_presets() -> None:
    """List the built-in configuration presets."""
    from sbir.presets import available_presets

    for name in available_presets():
        typer.echo(name)


@model_app.command("info")
def model_info(config: ConfigOption = None, overrides: Overrides = None) -> None:
    """Build the configured model (no pretrained weights) and print its parameter counts."""
    from sbir.models import build_model

    cfg = _load(config, overrides)
    model = build_model(cfg.model, load_pretrained=False)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    typer.echo(f"method: {cfg.model.method}\nparameters: {total:,}\ntrainable: {trainable:,}")


@model_app.command("convert-official")
def model_convert_official(
    checkpoint: Annotated[Path, typer.Argument(help="the released best_checkpoint.pth")],
    out: Annotated[Path, typer.Option("--out", help="output checkpoint directory")],
    config: ConfigOption = None,
    overrides: Overrides = None,
) -> None:
    """Load the released ZSE-SBIR checkpoint strictly and save it in the project's format."""
    from sbir.checkpoint import save_checkpoint
    from sbir.models.zse import ZSESBIR, load_official_checkpoint

    cfg = _load(config, overrides)
    if cfg.model.method != "zse":
        typer.secho("convert-official needs model.method=zse", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    model = ZSESBIR(cfg.model.zse)
    load_official_checkpoint(model, checkpoint)
    save_checkpoint(out, model, cfg, extra={"source": str(checkpoint)})
    typer.echo(f"wrote {out}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="where reports and checkpoints go")] = Path("demo_out"),
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Run the end-to-end demo on the built-in synthetic dataset (no downloads)."""
    from pipelines.demo import run_demo

    run_demo(out, seed=seed, echo=typer.echo)


if __name__ == "__main__":
    app()
