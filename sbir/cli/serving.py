"""`sbir index build`, `sbir serve` and `sbir query`: the gallery, the endpoint and a client of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sbir.cli.common import ConfigOption, DryRun, Overrides, config_from, stop_signals
from sbir.errors import UsageError

ROLES = ("test", "val", "train")  # the prepared roles a gallery can hold

index_app = typer.Typer(
    help="Build saved galleries (embeddings + FAISS index) for serving.", no_args_is_help=True, rich_markup_mode=None
)


@index_app.command("build")
def index_build(
    checkpoint: Annotated[str, typer.Option(help="checkpoint dir, MLflow run id, runs:/… or models:/name@alias")],
    out: Annotated[str, typer.Option(help="gallery folder to write (local or s3://)")],
    prepared: Annotated[str | None, typer.Option(help="prepared dataset whose photos form the gallery")] = None,
    images: Annotated[Path | None, typer.Option(help="or: a plain folder of images (no classes)")] = None,
    roles: Annotated[str, typer.Option(help="comma-separated prepared roles to include")] = "test",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a gallery already in --out")] = False,
    dry_run: DryRun = False,
    config: ConfigOption = None,
    overrides: Overrides = None,
) -> None:
    """Encode gallery photos with Ray Data batch inference and save the gallery for `sbir serve`.

    Batch size, actor count and CPUs/GPUs per actor are eval.batch_size, eval.num_workers,
    eval.cpus_per_worker and eval.gpus_per_worker; the index kind and its parameters are index.*.
    """
    from pipelines import storage
    from pipelines.embed import IMAGE_SUFFIXES
    from pipelines.prepare import read_manifest
    from pipelines.ray_runtime import ensure_ray
    from pipelines.tracking import is_tracked_reference, resolve_reference
    from sbir.checkpoint import check_checkpoint
    from sbir.config import config_for_checkpoint
    from sbir.files import files_inside

    user = config_from(config, overrides)
    if (prepared is None) == (images is None):
        raise UsageError("build a gallery from a prepared dataset (--prepared) or a folder of images (--images), one")
    role_list = tuple(r.strip() for r in roles.split(",") if r.strip())
    if not role_list or set(role_list) - set(ROLES):
        raise UsageError(f"--roles {roles!r}: give one or more of {', '.join(ROLES)}, comma-separated")
    # Everything that can be checked without Ray is checked here, and by --dry-run too (which leaves a tracked
    # model and s3:// data to the real run: they may only be reachable from the cluster).
    resolved = None
    if not (dry_run and is_tracked_reference(checkpoint)):
        resolved = resolve_reference(checkpoint, user.tracking.uri, runs_dir=user.run.dir)
    cfg = config_for_checkpoint(check_checkpoint(resolved.directory).config, config, overrides) if resolved else user
    if images is not None:
        if not images.is_dir():
            raise UsageError(f"--images {images} is not a folder")
        files_inside(images, IMAGE_SUFFIXES)  # a link out of the folder is refused now, not after Ray started
    if prepared is not None and not (dry_run and storage.is_s3(prepared)):
        photos = {role for role, modalities in read_manifest(prepared).counts.items() if "photo" in modalities}
        if missing := [r for r in role_list if r not in photos]:
            raise UsageError(f"{prepared} has no {', '.join(missing)} photos; its roles with photos: {sorted(photos)}")
    if not storage.is_s3(out) and (Path(out) / "gallery.json").exists() and not overwrite:
        raise UsageError(f"{out} already holds a gallery; pass --overwrite to replace it, or another --out")
    if dry_run:
        source = prepared or images
        typer.echo(f"ok: sbir index build would encode {source} with {checkpoint} into {out} ({cfg.index.kind} index)")
        return
    ensure_ray(cfg.run.ray_address, timeout_s=cfg.run.ray_connect_timeout_s)
    from pipelines.gallery import build_gallery

    build = build_gallery(resolved, out, cfg, prepared=prepared, roles=role_list, images=images, echo=typer.echo)
    typer.echo(
        f"gallery: {build.out} ({build.photos} photos, {build.kind} gallery, {build.index_kind} index, "
        f"{build.images_per_second:.0f} images/s)"
    )
    if build.mlflow_run:
        typer.echo(f"logged as artifact 'gallery' of MLflow run {build.mlflow_run}")


def serve_command(
    model: Annotated[str | None, typer.Option(help="checkpoint reference (default serve.model)")] = None,
    gallery: Annotated[
        str | None, typer.Option(help="saved gallery (default serve.gallery, else the model run's artifact)")
    ] = None,
    write_config: Annotated[
        Path | None, typer.Option(help="write the Serve config YAML for serve run / serve deploy and exit")
    ] = None,
    working_dir: Annotated[
        str | None,
        typer.Option(help="with --write-config: runtime_env.working_dir, a remote URI (e.g. s3://…/sbir.zip)"),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="with --write-config: replace that file")] = False,
    config: ConfigOption = None,
    overrides: Overrides = None,
) -> None:
    """Serve a checkpoint and its gallery on Ray Serve until Ctrl-C (RAY_ADDRESS or a local cluster)."""
    cfg = config_from(config, overrides)
    args = {"config": config, "overrides": list(overrides or []), "model": model, "gallery": gallery}
    if write_config is None and (working_dir is not None or overwrite):
        raise UsageError("--working-dir and --overwrite only go with --write-config (they shape the written file)")
    if write_config is not None:
        from sbir.files import check_output
        from serve.config_file import serve_config, write

        check_output(write_config, want="file", overwrite=overwrite, option="--write-config")
        document = serve_config(cfg, args, working_dir=working_dir)
        path = write(document, write_config)
        typer.echo(f"wrote {path}")
        return
    reference = model or cfg.serve.model
    if not reference:
        raise UsageError("name the model to serve: --model <path|run id|models:/name@alias> (or serve.model=…)")
    from pipelines.ray_runtime import ensure_ray
    from pipelines.tracking import is_tracked_reference, resolve_reference

    if not is_tracked_reference(reference):
        resolve_reference(reference)  # a local folder that is not a checkpoint fails now, before Ray starts

    from serve.launch import serve_until_stopped

    ensure_ray(cfg.run.ray_address, timeout_s=cfg.run.ray_connect_timeout_s)
    # After ray.init, which installs its own SIGTERM handler (sys.exit) in the driver: ours replace it, so one
    # Ctrl-C or SIGTERM stops the endpoint cleanly at any moment of its start or while it serves.
    with stop_signals() as stopped:
        serve_until_stopped(cfg, args, stopped, echo=typer.echo)


def query(
    sketch: Annotated[Path, typer.Argument(help="sketch image (PNG/JPEG/WebP) or QuickDraw strokes (.json/.ndjson)")],
    url: Annotated[str, typer.Option(help="endpoint URL")] = "http://127.0.0.1:8000",
    k: Annotated[int | None, typer.Option("-k", help="how many results")] = None,
    mode: Annotated[str | None, typer.Option(help="ret or rn_rerank (ZSE-SBIR); default: the model's")] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="SBIR_API_KEY", help="API key, if the endpoint needs one")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw answer")] = False,
) -> None:
    """Send one sketch to a running endpoint and print the top-k."""
    from sbir.client import Client

    if not sketch.is_file():
        raise UsageError(f"{sketch} is not a file")
    with Client(url, api_key) as client:
        if sketch.suffix.lower() in (".json", ".ndjson"):
            strokes = _read_strokes(sketch)
            response = client.search(strokes=strokes, k=k, mode=mode)
        else:
            response = client.search(sketch, k=k, mode=mode)
    if as_json:
        typer.echo(json.dumps([hit.__dict__ for hit in response.hits], indent=2))
        return
    typer.echo(f"{response.model_id}  mode {response.mode}  ({response.timings.get('total', 0) * 1000:.0f} ms)")
    for hit in response.hits:
        typer.echo(f"{hit.rank:>3}  id {hit.id:<8} score {hit.score:8.4f}  {hit.class_name or '-':<20} {hit.path}")


def _read_strokes(path: Path):
    """The first drawing of a QuickDraw .json/.ndjson file, or a UsageError naming what is wrong with it."""
    try:
        lines = path.read_bytes().decode("utf-8").strip().splitlines()
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text (byte {exc.start}); QuickDraw files are JSON") from None
    if not lines:
        raise UsageError(f"{path} is empty; expected a QuickDraw drawing (JSON with a 'drawing' list of strokes)")
    try:
        return json.loads(lines[0])
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not QuickDraw JSON ({exc})") from None
