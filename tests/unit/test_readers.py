"""Split-list parsing, the layout readers, pairs and the validation split, on tiny fixture datasets."""

from __future__ import annotations

import gzip
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from sbir.data.readers import LAYOUTS, LoadedSplit, read_split, sketchy_pair_id
from sbir.data.records import DatasetError
from sbir.data.splitfiles import (
    format_file_list,
    official_classes,
    official_list_dir,
    packaged_splits_root,
    read_class_ids,
    read_file_list,
)
from sbir.data.validation import selection_role, split_validation_classes, validation_count

# ----------------------------------------------------------------------------- fixture writers


def write_image(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> None:
    """A 4x4 image; the format follows the extension (.png / .jpg / .JPEG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.new("RGB", (4, 4), color).save(path, fmt)


def write_list(path: Path, lines: list[str]) -> None:
    """Write a list file, gzipped when the name ends in .gz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


SKETCHY_SEEN = ["ant", "bear", "car_(sedan)", "dog", "eel"]
SKETCHY_UNSEEN = ["cup", "hot-air_balloon"]
SK_DIR = "256x256/sketch/tx_000000000000_ready"
PH_DIR = "256x256/photo/tx_000000000000_ready"
EXT_DIR = "EXTEND_image_sketchy_ready"


def make_sketchy(base: Path, split: str = "zeroshot1") -> Path:
    """A Sketchy-Ext data root (``base/Sketchy``) with its own zeroshot-style lists; returns the dataset root."""
    root = base / "Sketchy"
    lists = root / split
    write_list(lists / "cname_cid.txt", [f"{c} {i}" for i, c in enumerate(SKETCHY_SEEN)])
    write_list(lists / "cname_cid_zero.txt", [f"{c} {i}" for i, c in enumerate(SKETCHY_UNSEEN)])
    for part, classes in (("train", SKETCHY_SEEN), ("zero", SKETCHY_UNSEEN)):
        sketches, photos = [], []
        for cid, cls in enumerate(classes):
            for n in range(2):
                photo = f"n0{cid}_{n}"
                photos.append(f"{PH_DIR}/{cls}/{photo}.jpg {cid}")
                write_image(root / PH_DIR / cls / f"{photo}.jpg")
                for k in (1, 2):
                    sketches.append(f"{SK_DIR}/{cls}/{photo}-{k}.png {cid}")
                    write_image(root / SK_DIR / cls / f"{photo}-{k}.png", (0, 0, 0))
            for ext in (f"ext_{cid}.jpg", f"n0{cid}_0.jpg"):  # an EXTEND photo and the copy of an original
                photos.append(f"{EXT_DIR}/{cls}/{ext} {cid}")
                write_image(root / EXT_DIR / cls / ext)
        write_list(lists / f"sketch_tx_000000000000_ready_filelist_{part}.txt.gz", sketches)
        write_list(lists / f"all_photo_filelist_{part}.txt", photos)
    return root


TU_SEEN = ["bottle opener", "alarm clock", "pig"]
TU_UNSEEN = ["mouse (animal)", "hot air balloon"]


def make_tuberlin(root: Path) -> Path:
    """A TU-Berlin-Ext dataset root with own lists but no training photo list (as released)."""
    lists = root / "zeroshot"
    write_list(lists / "cname_cid.txt", [f"{c} {i}" for i, c in enumerate(TU_SEEN)])
    write_list(lists / "cname_cid_zero.txt", [f"{c} {i}" for i, c in enumerate(TU_UNSEEN)])
    for part, classes in (("train", TU_SEEN), ("zero", TU_UNSEEN)):
        sketches, photos = [], []
        for cid, cls in enumerate(classes):
            for n in (12, 3):
                sketches.append(f"png_ready/{cls}/{cid}{n}.png {cid}")
                write_image(root / "png_ready" / cls / f"{cid}{n}.png", (0, 0, 0))
            for name in ("n02_b.JPEG", "n01_a.JPEG"):
                write_image(root / "ImageResized_ready" / cls / name)
                photos.append(f"ImageResized_ready/{cls}/{name} {cid}")
        write_list(lists / f"png_ready_filelist_{part}.txt", sketches)
        if part == "zero":
            write_list(lists / "ImageResized_ready_filelist_zero.txt.gz", photos)
    return root


QD_SEEN = ["palm tree", "fire_hydrant", "teapot"]
QD_UNSEEN = ["bat", "cow"]


def make_quickdraw(root: Path) -> Path:
    """A QuickDraw-Ext dataset root with only the released (zero) lists."""
    lists = root / "zeroshot"
    write_list(lists / "cname_cid.txt", [f"{c} {i}" for i, c in enumerate(QD_SEEN)])
    write_list(lists / "cname_cid_zero.txt", [f"{c} {i}" for i, c in enumerate(QD_UNSEEN)])
    sketches, photos = [], []
    for cid, cls in enumerate(QD_SEEN + QD_UNSEEN):
        for n in (2, 1):
            write_image(root / "sketches" / cls / f"{n}{cid}.png", (0, 0, 0))
            write_image(root / "images" / cls / f"image_0{n}.jpg")
            if cls in QD_UNSEEN:
                sketches.append(f"sketches/{cls}/{n}{cid}.png {QD_UNSEEN.index(cls)}")
                photos.append(f"images/{cls}/image_0{n}.jpg {QD_UNSEEN.index(cls)}")
    write_list(lists / "sketch_zero.txt", sketches)
    write_list(lists / "all_photo_zero.txt", photos)
    return root


GENERIC_SEEN = ["red thing", "blue", "green", "cyan"]
GENERIC_UNSEEN = ["yellow"]


def make_generic(root: Path, split: str = "mine") -> Path:
    """A generic dataset: class folders per modality and plain seen/unseen class lists."""
    write_list(root / split / "seen_classes.txt", ["# seen classes", *GENERIC_SEEN, ""])
    write_list(root / split / "unseen_classes.txt", GENERIC_UNSEEN)
    for cls in GENERIC_SEEN + GENERIC_UNSEEN:
        for n in range(2):
            write_image(root / "sketch" / cls / f"s {n}.png", (0, 0, 0))
            write_image(root / "photo" / cls / f"p {n}.jpg")
    (root / "photo" / "blue" / "notes.txt").write_text("not an image")
    return root


# ----------------------------------------------------------------------------- official packaged lists


@pytest.mark.parametrize(
    ("dataset", "split", "n_seen", "n_unseen", "n_val"),
    [
        ("sketchy", "zeroshot1", 100, 25, 10),
        ("Sketchy", "zeroshot0", 104, 21, 10),
        ("tuberlin", "zeroshot", 220, 30, 22),
        ("QuickDraw", "zeroshot", 80, 30, 8),
    ],
)
def test_official_classes_and_validation_counts(dataset, split, n_seen, n_unseen, n_val):
    seen, unseen = official_classes(dataset, split)
    assert (len(seen), len(unseen)) == (n_seen, n_unseen)
    assert not set(seen) & set(unseen)
    train, val = split_validation_classes(seen, 0.1, 0)
    assert len(val) == n_val and len(train) == n_seen - n_val
    assert not set(val) & set(train) and not set(val) & set(unseen)
    assert split_validation_classes(seen, 0.1, 0) == (train, val)  # deterministic


def test_official_unseen_order_matches_class_lists():
    root = packaged_splits_root().joinpath("class_lists")
    for (dataset, split), name in {
        ("sketchy", "zeroshot1"): "sketchy25",
        ("sketchy", "zeroshot0"): "sketchy21",
        ("tuberlin", "zeroshot"): "tuberlin30",
        ("quickdraw", "zeroshot"): "quickdraw30",
    }.items():
        expected = root.joinpath(f"test_class_{name}.txt").read_text().split("\n")
        assert official_classes(dataset, split)[1] == [c for c in expected if c]
    assert "bottle opener" in official_classes("tuberlin", "zeroshot")[1]


@pytest.mark.parametrize(
    ("split", "counts"),
    [
        ("zeroshot1", {"train_sketch": 55252, "train_photo": 68401, "test_sketch": 15229, "test_photo": 17101}),
        ("zeroshot0", {"train_sketch": 57587, "train_photo": 72949, "test_sketch": 12694, "test_photo": 12553}),
    ],
)
def test_packaged_sketchy_lists_read_without_images(tmp_path, split, counts):
    data = read_split("sketchy", tmp_path, split)  # all four lists are released: no class folders needed
    assert data.list_source == f"package:Sketchy/{split}" and data.generated_lists == []
    got = Counter(f"{'test' if r.role == 'test' else 'train'}_{r.modality}" for r in data.records)
    assert got == counts
    assert {r.class_name for r in data.records if r.role == "val"} == set(data.val_classes)
    originals = sum(r.pair_id is not None for r in data.select("test", "photo"))
    assert originals == {"zeroshot1": 2500, "zeroshot0": 2100}[split]
    photo_ids = {r.pair_id for r in data.select(modality="photo")}
    assert all(r.pair_id in photo_ids for r in data.select(modality="sketch"))


def test_packaged_tuberlin_and_quickdraw_lists():
    tu, qd = official_list_dir("tuberlin", "zeroshot"), official_list_dir("quickdraw", "zeroshot")
    tu_seen, tu_unseen = read_class_ids(tu / "cname_cid.txt"), read_class_ids(tu / "cname_cid_zero.txt")
    assert len(read_file_list(tu / "png_ready_filelist_train.txt.gz", tu_seen).entries) == 15400
    assert len(read_file_list(tu / "png_ready_filelist_zero.txt.gz", tu_unseen).entries) == 2400
    photos = read_file_list(tu / "ImageResized_ready_filelist_zero.txt.gz", tu_unseen)
    assert len(photos.entries) == 27989 and len(photos.sha256) == 64
    assert any(cls == "bottle opener" and " " in path for path, cls in photos.entries)
    qd_unseen = read_class_ids(qd / "cname_cid_zero.txt")
    assert len(read_file_list(qd / "sketch_zero.txt.gz", qd_unseen).entries) == 92291
    assert len(read_file_list(qd / "all_photo_zero.txt.gz", qd_unseen).entries) == 54151


# ----------------------------------------------------------------------------- list parsing


def test_list_parsing_with_spaces_and_errors(tmp_path):
    cname = tmp_path / "cname_cid.txt"
    write_list(cname, ["bottle opener 0", "alarm clock  1", "", "pig\t2"])
    classes = read_class_ids(cname)
    assert classes == {0: "bottle opener", 1: "alarm clock", 2: "pig"}
    lst = tmp_path / "l.txt"
    write_list(lst, ["png_ready/bottle opener/2188.png 0", "./png_ready/pig/1.png 2\r"])
    assert read_file_list(lst, classes).entries == [
        ("png_ready/bottle opener/2188.png", "bottle opener"),
        ("png_ready/pig/1.png", "pig"),
    ]
    cases = {
        "png_ready/pig/1.png": "expected '<relative path> <id>'",
        "png_ready/pig/1.png x": "last token must be an integer",
        "png_ready/pig/1.png 7": "class id 7 is not in the class list",
        "png_ready/dog/1.png 2": "not inside a folder named after its class 'pig'",
        "../pig/1.png 2": "relative path inside the dataset root",
    }
    for line, message in cases.items():
        write_list(lst, ["png_ready/pig/0.png 2", line])
        with pytest.raises(DatasetError, match=re.escape(message)) as err:
            read_file_list(lst, classes)
        assert f"{lst}:2" in str(err.value)
    write_list(cname, ["pig 0", "dog 0"])
    with pytest.raises(DatasetError, match=r"cname_cid.txt:2: id 0 already used"):
        read_class_ids(cname)
    assert format_file_list([("a b/c.png", 3)]) == "a b/c.png 3\n"


# ----------------------------------------------------------------------------- layouts


def test_sketchy_layout_from_data_root(tmp_path):
    dataset_root = make_sketchy(tmp_path)
    data = read_split("synthetic", tmp_path, "zeroshot1")  # data root holding Sketchy/ -> dataset root
    assert isinstance(data, LoadedSplit)
    assert data.root == str(dataset_root.absolute()) and data.layout == "synthetic"
    assert data.list_source == str(dataset_root.absolute() / "zeroshot1") and data.generated_lists == []
    assert set(data.list_sha256) == {*LAYOUTS["sketchy"].sketch_lists, *LAYOUTS["sketchy"].photo_lists}
    assert (len(data.train_classes), len(data.val_classes), data.test_classes) == (4, 1, SKETCHY_UNSEEN)
    assert data.class_names[:4] == [c for c in SKETCHY_SEEN if c not in data.val_classes]
    assert len(data.records) == 7 * 4 + 7 * 4  # per class: 4 sketches, 2 basic + 2 EXTEND photos
    val = data.val_classes[0]
    assert {r.role for r in data.records if r.class_name == val} == {"val"}
    assert {r.role for r in data.records if r.class_name == "cup"} == {"test"}
    sk = next(r for r in data.records if r.path == f"{SK_DIR}/car_(sedan)/n02_1-2.png")
    assert (sk.modality, sk.class_name, sk.pair_id) == ("sketch", "car_(sedan)", "car_(sedan)/n02_1")
    ph = next(r for r in data.records if r.path == f"{PH_DIR}/car_(sedan)/n02_1.jpg")
    assert ph.pair_id == sk.pair_id
    ext = [r for r in data.records if r.path.startswith(EXT_DIR)]
    assert len(ext) == 14 and all(r.pair_id is None for r in ext)
    assert data.class_id("cup") == 5 and data.class_id(data.val_classes[0]) == 4
    assert all((dataset_root / r.path).is_file() for r in data.records)


def test_sketchy_pair_id_convention():
    assert sketchy_pair_id(f"{SK_DIR}/cup/n03147509_1920-10.png", "sketch") == "cup/n03147509_1920"
    assert sketchy_pair_id(f"{PH_DIR}/cup/n03147509_1920.jpg", "photo") == "cup/n03147509_1920"
    assert sketchy_pair_id(f"{EXT_DIR}/cup/ext_1.jpg", "photo") is None
    assert sketchy_pair_id(f"{SK_DIR}/cup/odd.png", "sketch") is None


def test_tuberlin_regenerates_train_photos(tmp_path, caplog):
    make_tuberlin(tmp_path)
    data = read_split("TUBerlin", tmp_path, "zeroshot", val_fraction=0.0)
    assert data.generated_lists == ["ImageResized_ready_filelist_train.txt"]
    assert "regenerated from the class folders" in caplog.text
    photos = [r.path for r in data.select("train", "photo")]
    assert photos == [f"ImageResized_ready/{c}/{n}" for c in TU_SEEN for n in ("n01_a.JPEG", "n02_b.JPEG")]
    sketches = [r.path for r in data.select("train", "sketch")]
    assert sketches[:2] == ["png_ready/bottle opener/012.png", "png_ready/bottle opener/03.png"]  # list order kept
    assert data.test_classes == TU_UNSEEN and len(data.select("test", "photo")) == 4
    assert all(r.pair_id is None for r in data.records)
    again = read_split("tuberlin", tmp_path, "zeroshot", val_fraction=0.0)
    assert again.list_sha256 == data.list_sha256  # regeneration is deterministic


def test_quickdraw_regenerates_both_train_lists(tmp_path):
    make_quickdraw(tmp_path)
    data = read_split("quickdraw", tmp_path, "zeroshot", val_fraction=0.34)
    assert data.generated_lists == ["sketch_train.txt", "all_photo_train.txt"]
    assert len(data.val_classes) == 1 and len(data.train_classes) == 2
    seen_records = [r for r in data.records if r.role != "test"]
    assert [r.path for r in seen_records if r.class_name == "palm tree"] == [
        "sketches/palm tree/10.png",
        "sketches/palm tree/20.png",
        "images/palm tree/image_01.jpg",
        "images/palm tree/image_02.jpg",
    ]
    assert Counter(r.role for r in data.records) == {"train": 8, "val": 4, "test": 8}


def test_packaged_lists_with_regenerated_train_lists(tmp_path):
    """QuickDraw without own lists: packaged zero lists + train lists regenerated from the 80 seen folders."""
    seen, _ = official_classes("quickdraw", "zeroshot")
    for cls in seen:
        write_image(tmp_path / "QuickDraw" / "sketches" / cls / "1.png")
        write_image(tmp_path / "QuickDraw" / "images" / cls / "image_1.jpg")
    data = read_split("quickdraw", tmp_path, "zeroshot")
    assert data.list_source == "package:QuickDraw/zeroshot"
    assert data.generated_lists == ["sketch_train.txt", "all_photo_train.txt"]
    assert (len(data.train_classes), len(data.val_classes), len(data.test_classes)) == (72, 8, 30)
    assert len(data.select("test", "sketch")) == 92291 and len(data.select(role="val")) == 16


def test_generic_layout_and_auto_pairs(tmp_path):
    make_generic(tmp_path)
    data = read_split("generic", tmp_path, "mine", val_fraction=0.25, val_seed=3)
    assert data.generated_lists == ["sketch_train.txt", "photo_train.txt", "sketch_zero.txt", "photo_zero.txt"]
    assert len(data.val_classes) == 1 and data.test_classes == GENERIC_UNSEEN
    assert len(data.records) == 5 * 4  # notes.txt is not an image
    assert all(r.pair_id is None for r in data.records)
    write_list(
        tmp_path / "mine" / "pairs.txt",
        ["sketch/red thing/s 0.png\tphoto/red thing/p 1.jpg\t0", "sketch/yellow/s 1.png\tphoto/yellow/p 1.jpg\t4"],
    )
    paired = read_split("generic", tmp_path, "mine", val_fraction=0.25, val_seed=3)
    assert paired.pairs_source == str(tmp_path.absolute() / "mine" / "pairs.txt")
    pairs = {r.path: r.pair_id for r in paired.records if r.pair_id}
    assert pairs == {
        "sketch/red thing/s 0.png": "photo/red thing/p 1.jpg",
        "photo/red thing/p 1.jpg": "photo/red thing/p 1.jpg",
        "sketch/yellow/s 1.png": "photo/yellow/p 1.jpg",
        "photo/yellow/p 1.jpg": "photo/yellow/p 1.jpg",
    }


def test_pairs_file_overrides_naming_and_reports_bad_lines(tmp_path):
    make_sketchy(tmp_path)
    pairs = tmp_path / "pairs.txt"
    write_list(pairs, [f"{SK_DIR}/cup/n00_0-1.png {EXT_DIR}/cup/ext_0.jpg 5"])  # ids: seen then unseen
    data = read_split("sketchy", tmp_path, "zeroshot1", pairs_file=pairs)
    assert {r.path: r.pair_id for r in data.records if r.pair_id} == {
        f"{SK_DIR}/cup/n00_0-1.png": f"{EXT_DIR}/cup/ext_0.jpg",
        f"{EXT_DIR}/cup/ext_0.jpg": f"{EXT_DIR}/cup/ext_0.jpg",
    }
    bad = {
        f"{SK_DIR}/cup/n00_0-1.png {EXT_DIR}/cup/ext_0.jpg 0": "belongs to class 'cup', not 'ant'",
        f"{SK_DIR}/cup/n00_0-1.png {EXT_DIR}/cup/ext_0.jpg 9": "class id '9' is not in 0..6",
        f"{SK_DIR}/cup/nope-1.png {EXT_DIR}/cup/ext_0.jpg 5": "is not a sketch of the split's lists",
        f"{EXT_DIR}/cup/ext_0.jpg {EXT_DIR}/cup/ext_0.jpg 5": "is not a sketch of the split's lists",
        "a b c d": "TAB-separate the fields",
    }
    for line, message in bad.items():
        write_list(pairs, [line])
        with pytest.raises(DatasetError, match=re.escape(message)) as err:
            read_split("sketchy", tmp_path, "zeroshot1", pairs_file=pairs)
        assert f"{pairs}:1" in str(err.value)
    with pytest.raises(DatasetError, match=r"pairs list .*nothere\.txt not found"):
        read_split("sketchy", tmp_path, "zeroshot1", pairs_file="nothere.txt")


def test_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match="does not exist or is not a folder"):
        read_split("sketchy", tmp_path / "absent", "zeroshot1")
    with pytest.raises(DatasetError, match="unknown layout 'imagenet'"):
        read_split("imagenet", tmp_path, "zeroshot1")
    with pytest.raises(DatasetError, match=r"no split lists for layout 'tuberlin'.*\['zeroshot'\]"):
        read_split("tuberlin", tmp_path, "zeroshot1")
    with pytest.raises(DatasetError, match=r"220 photo class folder\(s\) missing: .*ImageResized_ready/wrist-watch"):
        read_split("tuberlin", tmp_path, "zeroshot")
    with pytest.raises(DatasetError, match=r"seen_classes\.txt does not exist"):
        read_split("generic", tmp_path, "mine")

    root = make_sketchy(tmp_path / "a")
    (root / "zeroshot1" / "cname_cid.txt").rename(root / "zeroshot1" / "old.txt")
    with pytest.raises(DatasetError, match=r"holds .* but not cname_cid\.txt"):
        read_split("sketchy", root, "zeroshot1")
    write_list(root / "zeroshot1" / "cname_cid.txt", ["ant 0", "cup 1"])
    with pytest.raises(DatasetError, match=r"both seen and unseen: \['cup'\]"):
        read_split("sketchy", root, "zeroshot1")
    write_list(root / "zeroshot1" / "cname_cid.txt", ["ant"])
    with pytest.raises(DatasetError, match=r"cname_cid.txt:1: expected '<class name> <id>'"):
        read_split("sketchy", root, "zeroshot1")

    root = make_generic(tmp_path / "g")
    write_list(root / "mine" / "unseen_classes.txt", ["yellow", "purple"])
    with pytest.raises(DatasetError, match=r"1 sketch class folder\(s\) missing: .*sketch/purple"):
        read_split("generic", root, "mine")


# ----------------------------------------------------------------------------- validation split


def test_validation_split_properties():
    seen = [f"class{i}" for i in range(40)]
    train, val = split_validation_classes(seen, 0.1, 0)
    assert len(val) == 4 and set(train) | set(val) == set(seen) and not set(train) & set(val)
    assert train == [c for c in seen if c in train] and val == [c for c in seen if c in val]  # order kept
    assert split_validation_classes(list(reversed(seen)), 0.1, 0)[1] == list(reversed(val))  # names, not order
    assert split_validation_classes(seen, 0.1, 1)[1] != val
    assert split_validation_classes(seen, 0.0, 0) == (seen, [])
    sketchy25_val = split_validation_classes(official_classes("sketchy", "zeroshot1")[0], 0.1, 0)[1]
    assert sorted(sketchy25_val) == sorted(  # pinned: docs/data.md lists these; changing them breaks comparability
        ["trumpet", "motorcycle", "hat", "jack-o-lantern", "armor", "ape", "crab", "bread", "snake", "hourglass"]
    )
    assert [validation_count(n, 0.1) for n in (1, 2, 5, 14, 15, 100, 104, 220, 80)] == [0, 1, 1, 1, 2, 10, 10, 22, 8]
    with pytest.raises(ValueError, match="val_fraction"):
        validation_count(10, 1.0)
    with pytest.raises(DatasetError, match="duplicate"):
        split_validation_classes(["a", "a", "b"], 0.5)


def test_selection_role(tmp_path, caplog):
    make_generic(tmp_path)
    data = read_split("generic", tmp_path, "mine")
    assert selection_role(data) == "val"
    assert selection_role(data, use_unseen_test=True) == "test" and "explicit opt-in" in caplog.text
    no_val = read_split("generic", tmp_path, "mine", val_fraction=0.0)
    with pytest.raises(DatasetError, match="no validation classes"):
        selection_role(no_val)
