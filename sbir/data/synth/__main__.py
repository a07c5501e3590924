"""`python -m sbir.data.synth --out DIR --seed S ...`: the synthetic dataset writer without the typer CLI."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sbir.data.synth.writer import write_synthetic_dataset


def main(argv: list[str] | None = None) -> int:
    """Parse flags, write the dataset, log a one-line summary; returns the exit code."""
    ap = argparse.ArgumentParser(prog="python -m sbir.data.synth", description=__doc__)
    ap.add_argument("--out", type=Path, required=True, help="output directory (new, empty or a previous synth output)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-classes", type=int, default=100)
    ap.add_argument("--sketches-per-class", type=int, default=40)
    ap.add_argument("--photos-per-class", type=int, default=40)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--unseen-fraction", type=float, default=0.2)
    ap.add_argument("--split", default="zeroshot1")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        write_synthetic_dataset(
            args.out,
            seed=args.seed,
            num_classes=args.num_classes,
            sketches_per_class=args.sketches_per_class,
            photos_per_class=args.photos_per_class,
            image_size=args.image_size,
            unseen_fraction=args.unseen_fraction,
            split=args.split,
            workers=args.workers,
            progress=not args.no_progress,
        )
    except (ValueError, FileExistsError, NotADirectoryError) as exc:
        logging.getLogger("sbir.data.synth").error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
