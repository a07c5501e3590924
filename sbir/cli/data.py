"""`sbir data …`: synthesise, verify and prepare datasets. Ray is imported only by `prepare`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer

from sbir.errors import SbirError, UsageError

data_app = typer.Typer(help="Synthesise, verify and prepare datasets.", no_args_is_help=True, rich_markup_mode=None)

MAX_SIDE = 4096  # pixels: the largest image side `synth` and `rasterize` write (the models see 224)
LAYOUTS = "sketchy, tuberlin, quickdraw, generic (synthetic = sketchy)"


@data_app.command("synth")
def synth(
    out: Annotated[Path, typer.Option("--out", help="output folder (new, empty, or an earlier synth output)")],
    seed: Annotated[int, typer.Option(help="random seed; same seed, same bytes")] = 0,
    classes: Annotated[int, typer.Option(help="number of categories", min=2, max=100_000)] = 100,
    sketches_per_class: Annotated[int, typer.Option(help="sketches per category", min=1, max=100_000)] = 40,
    photos_per_class: Annotated[int, typer.Option(help="photos per category", min=1, max=100_000)] = 40,
    image_size: Annotated[int, typer.Option(help="image side in pixels", min=16, max=MAX_SIDE)] = 224,
    unseen_fraction: Annotated[float, typer.Option(help="share of categories held out as unseen")] = 0.2,
    split: Annotated[str, typer.Option(help="split folder name for the lists")] = "zeroshot1",
    workers: Annotated[int, typer.Option(help="processes (output does not depend on it)")] = 1,
) -> None:
    """Write the built-in synthetic dataset in the Sketchy-Ext layout, with split lists and pairs."""
    from sbir.data.synth import write_synthetic_dataset

    summary = write_synthetic_dataset(
        out,
        seed=seed,
        num_classes=classes,
        sketches_per_class=sketches_per_class,
        photos_per_class=photos_per_class,
        image_size=image_size,
        unseen_fraction=unseen_fraction,
        split=split,
        workers=workers,
    )
    typer.echo(
        f"wrote {summary.num_sketches} sketches and {summary.num_photos} photos of "
        f"{len(summary.seen_classes)} seen + {len(summary.unseen_classes)} unseen classes to {summary.dataset_root} "
        f"in {summary.seconds:.1f} s\ncontact sheet: {summary.contact_sheet}"
    )


@data_app.command("verify")
def verify(
    layout: Annotated[str, typer.Option(help=LAYOUTS)],
    root: Annotated[Path, typer.Option(help="dataset root (or its parent data root)")],
    split: Annotated[str, typer.Option(help="split folder, e.g. zeroshot1")],
    check_images: Annotated[bool, typer.Option(help="decode every image")] = True,
    strict: Annotated[bool, typer.Option(help="treat warnings (e.g. unlisted files) as problems")] = False,
    pairs: Annotated[Path | None, typer.Option(help="fine-grained pairs list")] = None,
    val_fraction: Annotated[
        float, typer.Option(help="share of seen classes held out for validation", min=0.0, max=0.99)
    ] = 0.1,
    val_seed: Annotated[int, typer.Option(help="seed of the validation-class choice")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Check a dataset root against a split; the report goes to stdout, and the command exits 1 (with one
    line on stderr) when anything is missing or unreadable."""
    from sbir.data.verify import verify_dataset

    report = verify_dataset(
        layout,
        root,
        split,
        check_images=check_images,
        strict=strict,
        pairs_file=pairs,
        val_fraction=val_fraction,
        val_seed=val_seed,
    )
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.to_text())
    if not report.ok:
        raise SbirError(f"{root} does not match split {split!r}: see the problems listed above")


@data_app.command("prepare")
def prepare(
    layout: Annotated[str, typer.Option(help=LAYOUTS)],
    root: Annotated[str, typer.Option(help="dataset root (or its parent data root)")],
    split: Annotated[str, typer.Option(help="split folder, e.g. zeroshot1")],
    out: Annotated[str, typer.Option(help="output folder or s3://bucket/prefix")],
    on_bad_file: Annotated[str, typer.Option(help="fail | skip (skipped files are listed in the manifest)")] = "fail",
    val_fraction: Annotated[
        float, typer.Option(help="share of seen classes held out for validation", min=0.0, max=0.99)
    ] = 0.1,
    val_seed: Annotated[int, typer.Option(help="seed of the validation-class choice")] = 0,
    pairs: Annotated[Path | None, typer.Option(help="fine-grained pairs list")] = None,
    rows_per_file: Annotated[int, typer.Option(help="rows per Parquet shard")] = 2000,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: RAY_ADDRESS or local)")] = None,
) -> None:
    """Turn any layout into Parquet shards plus a manifest with Ray Data (local path or s3://)."""
    from sbir.data.readers import read_split

    if on_bad_file not in ("fail", "skip"):
        raise UsageError(f"--on-bad-file must be 'fail' or 'skip', got {on_bad_file!r}")
    dataset = read_split(layout, root, split, val_fraction=val_fraction, val_seed=val_seed, pairs_file=pairs)

    from pipelines import storage
    from pipelines.prepare import prepare_dataset, prepared_already
    from pipelines.ray_runtime import ensure_ray

    storage.check_writable(out)  # an unreachable endpoint or a missing bucket fails before any image is read
    if prepared_already(dataset, out, on_bad_file) is None:  # type: ignore[arg-type]
        ensure_ray(address)  # (an up-to-date output needs no cluster: prepare_dataset returns it as it is)
    manifest = prepare_dataset(
        dataset, out, on_bad_file=on_bad_file, rows_per_file=rows_per_file, source=f"{layout}:{root}"
    )  # type: ignore[arg-type]
    roles = ", ".join(f"{role}: {manifest.role_total(role)}" for role in manifest.counts)
    typer.echo(
        f"prepared {manifest.num_rows} images ({roles}); {len(manifest.bad_files)} bad file(s) skipped\n"
        f"manifest: {out.rstrip('/')}/manifest.json"
    )


@data_app.command("rasterize")
def rasterize(
    ndjson: Annotated[Path, typer.Argument(help="QuickDraw ndjson file (raw or simplified), one drawing per line")],
    out: Annotated[Path, typer.Option("--out", help="folder for the PNG sketches")],
    size: Annotated[int, typer.Option(help="image side in pixels", min=16, max=MAX_SIDE)] = 224,
    pen_width: Annotated[float, typer.Option(help="pen width in pixels", min=0.5, max=64)] = 3.0,
    limit: Annotated[int | None, typer.Option(help="stop after this many drawings", min=1)] = None,
    on_bad_line: Annotated[str, typer.Option(help="fail | skip (skipped lines are reported)")] = "fail",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace PNGs already in --out")] = False,
) -> None:
    """Rasterise QuickDraw ndjson drawings to sketch PNGs named `<key_id or line number>.png`.

    A key_id that is not a plain file name (a path, '..', other characters) or that repeats an earlier
    one is a bad line; an existing PNG is never replaced unless --overwrite is given.
    """
    from sbir.data.strokes import StrokeFormatError, rasterize_drawing

    if on_bad_line not in ("fail", "skip"):
        raise UsageError(f"--on-bad-line must be 'fail' or 'skip', got {on_bad_line!r}")
    if not ndjson.is_file():
        raise UsageError(f"{ndjson} is not a file")
    out.mkdir(parents=True, exist_ok=True)
    written, skipped, seen = 0, [], set()
    with ndjson.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if limit is not None and written >= limit:
                break
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                name = sketch_file_name(obj, number)
                target = out / f"{name}.png"
                if name in seen:
                    raise StrokeFormatError(f"key_id {name!r} repeats an earlier drawing")
                if target.is_symlink():
                    raise StrokeFormatError(f"{target} is a link; sbir never writes through a link")
                if target.exists() and not overwrite:
                    raise StrokeFormatError(f"{target} exists (pass --overwrite to replace it)")
                image = rasterize_drawing(obj, size=size, pen_width=pen_width)
            except (StrokeFormatError, json.JSONDecodeError, ValueError) as exc:
                if on_bad_line == "fail":
                    raise SbirError(f"{ndjson}:{number}: {exc}") from None
                skipped.append(f"{ndjson}:{number}: {exc}")
                continue
            image.save(target)
            seen.add(name)
            written += 1
    for problem in skipped:
        typer.secho(f"skipped {problem}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"wrote {written} sketches to {out}; skipped {len(skipped)} bad line(s)")


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def sketch_file_name(drawing: object, line_number: int) -> str:
    """The PNG name of a drawing: its key_id when that is a plain file name, its line number when it has none."""
    from sbir.data.strokes import StrokeFormatError

    if not isinstance(drawing, dict) or "key_id" not in drawing:
        return str(line_number)
    name = str(drawing["key_id"])
    if not _PLAIN_NAME.match(name) or ".." in name:
        raise StrokeFormatError(f"key_id {name!r} is not a plain file name (letters, digits, '.', '_', '-')")
    return name
