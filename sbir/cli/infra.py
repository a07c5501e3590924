"""`sbir infra`: render the cluster deployment files from the cluster spec and check them offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sbir.errors import UsageError

infra_app = typer.Typer(
    help="Render and check the cluster deployment files (docs/deploy.md).", no_args_is_help=True, rich_markup_mode=None
)
SpecOption = Annotated[Path | None, typer.Option("--spec", help="cluster spec YAML (default: infra/cluster.yaml)")]


@infra_app.command("render")
def render_command(
    names: Annotated[list[str] | None, typer.Argument(help="files to print, e.g. kuberay/rayservice.yaml")] = None,
    spec: SpecOption = None,
    out: Annotated[Path | None, typer.Option(help="write every file under this folder (infra/ to update)")] = None,
) -> None:
    """Render the KubeRay manifests, core objects and launcher configs: all into --out, or the named to stdout."""
    from infra.render import FILES, render, render_all
    from infra.spec import load_spec

    cluster = load_spec(spec)
    if out is not None:
        if names:
            raise UsageError("--out writes every file; leave out the names, or drop --out to print them")
        for path in render_all(cluster, out):
            typer.echo(f"wrote {path}")
        return
    if not names:
        raise UsageError(f"name the files to print ({', '.join(FILES)}) or pass --out <folder>")
    for name in names:
        typer.echo(render(name, cluster), nl=False)


@infra_app.command("validate")
def validate_command(
    files: Annotated[list[Path] | None, typer.Argument(help="YAML files (default: the shipped ones)")] = None,
) -> None:
    """Check manifests offline: KubeRay CRD schemas, Kubernetes schemas, Ray's cluster-config schema."""
    import infra
    from infra.render import FILES
    from infra.validate import check_file

    paths = files or [Path(infra.__file__).parent / name for name in FILES]
    for path in paths:
        typer.echo(f"ok: {path} ({check_file(path)} object(s))")


@infra_app.command("commands")
def commands_command(spec: SpecOption = None) -> None:
    """Print the commands the cluster runs (the RayJobs' entrypoints), for `ray job submit` on any cluster."""
    from infra import workloads
    from infra.spec import load_spec

    cluster = load_spec(spec)
    for workload in (workloads.train(cluster), workloads.sweep(cluster), workloads.index(cluster)):
        typer.echo(f"{workload.name}: {workload.command}")
