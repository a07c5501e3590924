"""The built-in synthetic dataset: Sketchy-Ext layout, split lists, pairs, strokes, determinism, safety."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from sbir.data.strokes import rasterize_drawing
from sbir.data.synth import category_catalogue, read_synth_manifest, write_synthetic_dataset
from sbir.data.synth import writer as synth_writer
from sbir.data.synth.shapes import DISTINCT_IOU, outline_mask

SMALL = {"num_classes": 12, "sketches_per_class": 4, "photos_per_class": 4, "image_size": 64, "progress": False}
SKETCH_RE = re.compile(r"^256x256/sketch/tx_000000000000_ready/([a-z0-9_]+)/([a-z0-9_]+)-(\d+)\.png$")
PHOTO_RE = re.compile(r"^256x256/photo/tx_000000000000_ready/([a-z0-9_]+)/([a-z0-9_]+)\.jpg$")


def _lines(path: Path) -> list[tuple[str, int]]:
    out = []
    for line in path.read_text().splitlines():
        head, _, last = line.rpartition(" ")
        out.append((head, int(last)))
    return out


def _tree_hash(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    summary = write_synthetic_dataset(out, seed=0, **SMALL)
    return out, summary


def test_layout_and_split_lists_are_consistent(small):
    out, summary = small
    root, split = out / "Sketchy", out / "Sketchy" / "zeroshot1"
    seen, unseen = _lines(split / "cname_cid.txt"), _lines(split / "cname_cid_zero.txt")
    assert [i for _, i in seen] == list(range(len(seen)))
    assert [i for _, i in unseen] == list(range(len(unseen)))
    seen_names, unseen_names = [n for n, _ in seen], [n for n, _ in unseen]
    assert len(unseen_names) == round(0.2 * 12) and not set(seen_names) & set(unseen_names)
    assert set(seen_names) | set(unseen_names) == {c.name for c in category_catalogue()[:12]}
    assert (seen_names, unseen_names) == (summary.seen_classes, summary.unseen_classes)
    for suffix, names in (("train", seen_names), ("zero", unseen_names)):
        sketches = _lines(split / f"sketch_tx_000000000000_ready_filelist_{suffix}.txt")
        photos = _lines(split / f"all_photo_filelist_{suffix}.txt")
        assert len(sketches) == len(photos) == 4 * len(names)
        for path, cid in sketches:
            m = SKETCH_RE.match(path)
            assert m and m.group(1) == names[cid], path
            assert (root / path).is_file()
        for path, cid in photos:
            m = PHOTO_RE.match(path)
            assert m and m.group(1) == names[cid], path
            assert (root / path).is_file()
    on_disk = {p.relative_to(root).as_posix() for p in (root / "256x256").rglob("*") if p.is_file()}
    listed = {
        p
        for s in ("train", "zero")
        for f in ("sketch_tx_000000000000_ready", "all_photo")
        for p, _ in _lines(split / f"{f}_filelist_{s}.txt")
    }
    assert on_disk == listed
    assert summary.num_photos == summary.num_sketches == 48
    assert (out / "contact_sheet.png").is_file()
    manifest = read_synth_manifest(out)
    assert manifest is not None and manifest["seed"] == 0 and manifest["counts"]["sketches"] == 48
    assert manifest["seen_classes"] == seen_names and manifest["unseen_classes"] == unseen_names
    assert not (out / ".synth_incomplete").exists()


def test_fine_grained_pairs_follow_photo_id_naming(small):
    out, _ = small
    split = out / "Sketchy" / "zeroshot1"
    for suffix in ("train", "zero"):
        sketches = {p for p, _ in _lines(split / f"sketch_tx_000000000000_ready_filelist_{suffix}.txt")}
        photos = {p: c for p, c in _lines(split / f"all_photo_filelist_{suffix}.txt")}
        pairs = [line.split(" ") for line in (split / f"fg_pairs_{suffix}.txt").read_text().splitlines()]
        assert {s for s, _, _ in pairs} == sketches and len(pairs) == len(sketches)
        for sketch, photo, cid in pairs:
            sm, pm = SKETCH_RE.match(sketch), PHOTO_RE.match(photo)
            assert sm and pm and sm.group(1) == pm.group(1)
            assert sm.group(2) == pm.group(2) and sm.group(3) == "1"  # 4 sketches over 4 photos: one each
            assert photos[photo] == int(cid)


def test_sketches_are_distributed_over_photos_round_robin(tmp_path):
    write_synthetic_dataset(
        tmp_path / "d", num_classes=2, sketches_per_class=5, photos_per_class=2, image_size=32, progress=False
    )
    split = tmp_path / "d/Sketchy/zeroshot1"
    for suffix in ("train", "zero"):
        pairs = [line.split(" ") for line in (split / f"fg_pairs_{suffix}.txt").read_text().splitlines()]
        assert len(pairs) == 5
        stems = [Path(s).stem for s, _, _ in pairs]
        pid = Path(pairs[0][1]).stem.rsplit("_", 1)[0]
        assert stems == [f"{pid}_{p:05d}-{k}" for p, k in ((0, 1), (1, 1), (0, 2), (1, 2), (0, 3))]
        assert all(Path(s).stem.rsplit("-", 1)[0] == Path(ph).stem for s, ph, _ in pairs)


def test_same_seed_gives_identical_bytes_whatever_the_workers(small, tmp_path):
    out, _ = small
    write_synthetic_dataset(tmp_path / "again", seed=0, workers=2, **SMALL)
    assert _tree_hash(tmp_path / "again") == _tree_hash(out)


def test_different_seed_gives_different_images(small, tmp_path):
    out, _ = small
    write_synthetic_dataset(tmp_path / "other", seed=1, **SMALL)
    a, b = _tree_hash(out), _tree_hash(tmp_path / "other")
    images = [k for k in a if k.endswith((".jpg", ".png")) and "contact" not in k and k in b]
    assert sum(a[k] != b[k] for k in images) == len(images)


def test_catalogue_has_100_plus_distinct_categories():
    cats = category_catalogue()
    assert len(cats) >= 100
    names = [c.name for c in cats]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in names)
    masks = np.stack([outline_mask(c.build(None)) for c in cats]).reshape(len(cats), -1)
    inter = masks.astype(np.int32) @ masks.T.astype(np.int32)
    area = masks.sum(axis=1)
    iou = inter / (area[:, None] + area[None, :] - inter)
    np.fill_diagonal(iou, 0)
    assert iou.max() < DISTINCT_IOU
    assert len({c.template for c in cats[:12]}) >= 10  # a small prefix already mixes compositions


def test_instances_are_deterministic_and_deformed():
    cat = category_catalogue()[3]
    a = cat.instance(np.random.default_rng(5))
    b = cat.instance(np.random.default_rng(5))
    c = cat.instance(np.random.default_rng(6))
    assert all(np.array_equal(p.points, q.points) for p, q in zip(a, b, strict=True))
    assert not all(np.allclose(p.points, q.points) for p, q in zip(a, c, strict=True))


def test_sketches_are_dark_strokes_on_white_and_photos_are_colourful(small):
    out, _ = small
    root = out / "Sketchy/256x256"
    for path in sorted(root.glob("sketch/*/*/*.png"))[:20]:
        arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
        grey = arr.mean(axis=2)
        assert (grey > 200).mean() > 0.7 and grey.min() < 110, path
        assert np.abs(arr - arr[..., :1]).max() == 0  # no colour in sketches
    sat = []
    for path in sorted(root.glob("photo/*/*/*.jpg"))[:20]:
        arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        assert (arr.mean(axis=2) > 245).mean() < 0.2, path
        sat.append(float((arr.max(axis=2) - arr.min(axis=2)).mean()))
    assert np.mean(sat) > 25


def _ink(img: Image.Image) -> np.ndarray:
    mask = Image.fromarray(((np.asarray(img.convert("L")) < 200) * 255).astype(np.uint8))
    return np.asarray(mask.filter(ImageFilter.MaxFilter(3))) > 0


def test_ndjson_strokes_rasterise_back_to_the_written_sketch(small):
    out, _ = small
    files = sorted((out / "Sketchy/strokes").glob("*.ndjson"))
    assert len(files) == 12
    n = 0
    for f in files:
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            assert rec["word"] == f.stem and set(rec) >= {"key_id", "drawing", "sketch", "photo"}
            assert rec["sketch"].startswith(f"256x256/sketch/tx_000000000000_ready/{f.stem}/{rec['photo_id']}-")
            size = rec["image_size"]
            written = Image.open(out / "Sketchy" / rec["sketch"])
            redrawn = rasterize_drawing(line, size=size, pen_width=rec["pen_width"], padding=0)
            a, b = _ink(written), _ink(redrawn)
            assert (a & b).sum() / (a | b).sum() > 0.75, rec["sketch"]
            n += 1
    assert n == 48


def test_refuses_to_clobber_a_foreign_directory(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty"):
        write_synthetic_dataset(foreign, **SMALL)
    assert (foreign / "notes.txt").read_text() == "precious" and len(list(foreign.iterdir())) == 1
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        write_synthetic_dataset(tmp_path / "file", **SMALL)
    assert _synth_cli(["--out", str(foreign), "--classes", "2"]) == 2


def test_interrupted_run_is_not_complete_and_can_be_rerun(tmp_path, monkeypatch):
    out = tmp_path / "d"
    tiny = {**SMALL, "num_classes": 3, "image_size": 32}

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth_writer, "_contact_sheet", boom)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(out, **tiny)
    assert read_synth_manifest(out) is None and (out / ".synth_incomplete").exists()
    monkeypatch.undo()
    write_synthetic_dataset(out, **tiny)  # an interrupted synthetic output may be replaced
    first = _tree_hash(out)
    write_synthetic_dataset(out, **tiny)  # and so may a complete one, with the same result
    assert _tree_hash(out) == first and read_synth_manifest(out) is not None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 10_000}, "num_classes"),
        ({"num_classes": 1}, "num_classes"),
        ({"sketches_per_class": 0}, "at least one"),
        ({"image_size": 16}, "image_size"),
        ({"unseen_fraction": 1.0}, "unseen_fraction"),
        ({"split": "../x"}, "split"),
        ({"seed": -1}, "seed"),
        ({"workers": 0}, "workers"),
    ],
)
def test_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_synthetic_dataset(tmp_path / "d", **{**SMALL, **kwargs})
    assert not (tmp_path / "d").exists()


def _synth_cli(argv: list[str]) -> int:
    """Exit code of `sbir data synth <argv>` (the one command line)."""
    from typer.testing import CliRunner

    from sbir.cli import app

    return CliRunner().invoke(app, ["data", "synth", *argv]).exit_code


def test_cli_entry_point_writes_a_dataset(tmp_path):
    out = tmp_path / "cli"
    argv = ["--out", str(out), "--seed", "3", "--classes", "3", "--sketches-per-class", "2"]
    assert _synth_cli([*argv, "--photos-per-class", "1", "--image-size", "32"]) == 0
    manifest = read_synth_manifest(out)
    assert manifest is not None and manifest["seed"] == 3 and manifest["counts"]["sketches"] == 6
    assert "_00000-2.png" in (out / "Sketchy/zeroshot1/fg_pairs_train.txt").read_text()
