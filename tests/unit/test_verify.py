"""`verify_dataset`: counts, missing / unlisted / unreadable files and the ok flag, on tiny fixtures."""

from __future__ import annotations

import json
import shutil

from sbir.data.verify import check_image, verify_dataset
from tests.unit.test_readers import EXT_DIR, PH_DIR, SK_DIR, make_generic, make_sketchy, make_tuberlin, write_image


def test_clean_sketchy_fixture_is_ok(tmp_path):
    root = make_sketchy(tmp_path)
    report = verify_dataset("sketchy", tmp_path, "zeroshot1", progress=False)
    assert report.ok, report.to_text()
    assert report.root == str(root.absolute())
    assert (report.missing, report.unlisted, report.unreadable, report.errors) == ([], [], [], [])
    assert report.images_checked == 56
    cup = report.classes["cup"]
    assert (cup.role, cup.listed) == ("test", {"sketch": 4, "photo": 4})
    assert sorted(c.role for c in report.classes.values()).count("val") == 1
    text = report.to_text()
    assert "car_(sedan)" in text and text.endswith("OK") and "56 photos" not in text
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True


def test_missing_unlisted_and_unreadable_files(tmp_path):
    root = make_sketchy(tmp_path)
    (root / SK_DIR / "ant" / "n00_0-1.png").unlink()
    shutil.rmtree(root / EXT_DIR / "dog")
    write_image(root / PH_DIR / "cup" / "stray.jpg")  # in a listed class folder, in no list
    write_image(root / EXT_DIR / "eel" / "stray.JPG")
    (root / PH_DIR / "bear" / "n01_1.jpg").write_bytes(b"not an image at all")
    jpeg = (root / PH_DIR / "eel" / "n04_0.jpg").read_bytes()
    (root / PH_DIR / "eel" / "n04_0.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # truncated

    report = verify_dataset("sketchy", root, "zeroshot1", progress=False, workers=2)
    assert not report.ok
    assert sorted(report.missing) == [
        f"{SK_DIR}/ant/n00_0-1.png",
        f"{EXT_DIR}/dog/ext_3.jpg",
        f"{EXT_DIR}/dog/n03_0.jpg",
    ]
    assert report.missing_folders == [f"{EXT_DIR}/dog/ (2 listed files)"]
    assert sorted(report.unlisted) == [f"{PH_DIR}/cup/stray.jpg", f"{EXT_DIR}/eel/stray.JPG"]
    assert sorted(p for p, _ in report.unreadable) == [f"{PH_DIR}/bear/n01_1.jpg", f"{PH_DIR}/eel/n04_0.jpg"]
    assert report.classes["ant"].missing == {"sketch": 1, "photo": 0}
    assert report.classes["cup"].unlisted == {"sketch": 0, "photo": 1}
    assert report.classes["bear"].unreadable == {"sketch": 0, "photo": 1}
    assert report.images_checked == 56 - 3
    text = report.to_text(max_items=1)
    assert "missing files (3):" in text and "... and 2 more" in text and "PROBLEMS FOUND" in text
    assert "ERROR: 3 listed file(s) missing" in text and "ERROR: 2 image(s) cannot be decoded" in text


def test_unlisted_only_is_a_warning_unless_strict(tmp_path):
    root = make_sketchy(tmp_path)
    write_image(root / SK_DIR / "cup" / "extra-1.png")
    report = verify_dataset("sketchy", root, "zeroshot1", progress=False, check_images=False)
    assert report.ok and report.images_checked == 0
    assert report.warnings == ["1 image file(s) in class folders are in no list"]
    assert not verify_dataset("sketchy", root, "zeroshot1", progress=False, check_images=False, strict=True).ok


def test_regenerated_lists_and_generic_layout(tmp_path):
    make_tuberlin(tmp_path / "tu")
    report = verify_dataset("tuberlin", tmp_path / "tu", "zeroshot", progress=False)
    assert report.ok and report.generated_lists == ["ImageResized_ready_filelist_train.txt"]
    assert "regenerated from class folders: ImageResized_ready_filelist_train.txt" in report.to_text()
    assert report.classes["bottle opener"].listed == {"sketch": 2, "photo": 2}

    make_generic(tmp_path / "g")
    report = verify_dataset("generic", tmp_path / "g", "mine", progress=False)
    assert report.ok and report.images_checked == 20 and report.unlisted == []  # notes.txt is not an image


def test_unreadable_split_is_reported_not_raised(tmp_path):
    report = verify_dataset("sketchy", tmp_path / "absent", "zeroshot1", progress=False)
    assert not report.ok and "does not exist" in report.errors[0] and report.to_text().endswith("PROBLEMS FOUND")
    report = verify_dataset("tuberlin", tmp_path, "zeroshot", progress=False)
    assert not report.ok and "class folder(s) missing" in report.errors[0]


def test_official_lists_on_an_empty_root_report_missing_folders(tmp_path):
    report = verify_dataset("sketchy", tmp_path, "zeroshot1", progress=False)
    assert not report.ok and len(report.missing) == 55252 + 68401 + 15229 + 17101
    assert len(report.classes) == 125 and report.errors[0] == "375 folder(s) of listed files missing"


def test_check_image(tmp_path):
    write_image(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    assert check_image(tmp_path / "ok.png") is None
    assert check_image(tmp_path / "bad.png") is not None
    assert "FileNotFoundError" in check_image(tmp_path / "absent.png")
