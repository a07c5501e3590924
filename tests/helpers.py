"""Shared builders for the slow training tests (one small synthetic dataset, one short training recipe)."""

from __future__ import annotations

from pathlib import Path

# 12 classes (3 unseen, ~2 held out for validation), 6 sketches + 6 photos each, 64 px: seconds to write.
SMALL_SYNTH = {
    "seed": 1,
    "num_classes": 12,
    "sketches_per_class": 6,
    "photos_per_class": 6,
    "image_size": 64,
    "unseen_fraction": 0.25,
}
SMALL_VAL_FRACTION = 0.2
# Two epochs of two P x K steps: enough for a checkpoint per epoch, resume and validation, in seconds.
SHORT_TRAINING = [
    "train.epochs=2",
    "train.steps_per_epoch=2",
    "train.batch_size=12",
    "train.items_per_class=3",
]


# `sbir data synth` flags for a 6-class dataset at 32 px (the CLI tests' synth_root fixture).
SMALL_SYNTH_ARGS = ["--classes", "6", "--sketches-per-class", "2", "--photos-per-class", "2", "--image-size", "32"]


def write_small_synthetic(dest: Path) -> Path:
    """Write the small synthetic dataset into `dest` and return it."""
    from sbir.data.synth import write_synthetic_dataset

    write_synthetic_dataset(dest, progress=False, **SMALL_SYNTH)
    return dest


def one_line_error(result, code: int, *needles: str) -> str:
    """Assert a CLI result is one `error: …` line with `code` and no traceback, naming every needle."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
