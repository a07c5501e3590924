"""Parsing of ZS-SBIR split-list files and access to the official lists shipped with the package.

Formats (docs/data.md#file-formats): ``cname_cid*.txt`` lines are ``<class name> <id>`` and file lists are
``<relative path> <id>``; names and paths may contain spaces, so the id is the LAST whitespace token.
Plain class lists (generic layout) hold one class name per line. ``X.txt.gz`` is read like ``X.txt``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from sbir.data.records import DatasetError

ListPath = Path | Traversable

# dataset key -> folder name under resources/splits (and under a data root, docs/data.md#dataset-root)
OFFICIAL_DATASETS: dict[str, str] = {"sketchy": "Sketchy", "tuberlin": "TUBerlin", "quickdraw": "QuickDraw"}
OFFICIAL_SPLITS: dict[str, tuple[str, ...]] = {
    "sketchy": ("zeroshot0", "zeroshot1"),
    "tuberlin": ("zeroshot",),
    "quickdraw": ("zeroshot",),
}
SEEN_CLASS_FILE = "cname_cid.txt"
UNSEEN_CLASS_FILE = "cname_cid_zero.txt"


@dataclass(frozen=True)
class FileList:
    """A parsed ``<path> <id>`` list: (path, class name) entries in file order, plus the content's sha256."""

    source: str
    entries: list[tuple[str, str]]
    sha256: str


def packaged_splits_root() -> Traversable:
    """The folder of official split lists shipped inside the package (``sbir/resources/splits``)."""
    return files("sbir").joinpath("resources", "splits")


def dataset_key(dataset: str) -> str:
    """Normalise 'Sketchy' / 'sketchy' / 'TUBerlin' / 'tu-berlin' ... to an OFFICIAL_DATASETS key."""
    key = dataset.lower().replace("-", "").replace("_", "")
    if key not in OFFICIAL_DATASETS:
        raise DatasetError(f"unknown dataset {dataset!r}: official lists exist for {sorted(OFFICIAL_DATASETS)}")
    return key


def official_list_dir(dataset: str, split: str) -> Traversable:
    """The packaged list folder of an official split, e.g. ('sketchy', 'zeroshot1') -> .../Sketchy/zeroshot1."""
    key = dataset_key(dataset)
    if split not in OFFICIAL_SPLITS[key]:
        raise DatasetError(
            f"no official {OFFICIAL_DATASETS[key]} split {split!r}: the packaged splits are {OFFICIAL_SPLITS[key]}"
        )
    return packaged_splits_root().joinpath(OFFICIAL_DATASETS[key], split)


def official_classes(dataset: str, split: str) -> tuple[list[str], list[str]]:
    """(seen, unseen) class names of an official split, each in file (= id) order."""
    folder = official_list_dir(dataset, split)
    seen = list(read_class_ids(folder.joinpath(SEEN_CLASS_FILE)).values())
    unseen = list(read_class_ids(folder.joinpath(UNSEEN_CLASS_FILE)).values())
    return seen, unseen


def find_list(folder: ListPath, name: str) -> ListPath | None:
    """``folder/name`` or else ``folder/name.gz`` if either is a file, else None."""
    for candidate in (name, name + ".gz"):
        path = folder.joinpath(candidate)
        if path.is_file():
            return path
    return None


def _read_bytes(path: ListPath) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise DatasetError(f"split list {path} does not exist") from None
    except OSError as exc:
        raise DatasetError(f"cannot read split list {path}: {exc}") from exc
    if path.name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DatasetError(f"{path}: not a valid gzip file ({exc})") from exc
    return data


def iter_lines(path: ListPath) -> tuple[Iterator[tuple[int, str]], str]:
    """Non-blank lines of a (possibly gzipped) UTF-8 list as (1-based line number, text), and the sha256."""
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc})") from exc

    def lines() -> Iterator[tuple[int, str]]:
        for number, line in enumerate(io.StringIO(text, newline=None), start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line

    return lines(), hashlib.sha256(data).hexdigest()


def split_last(line: str, where: str, what: str) -> tuple[str, int]:
    """Split ``<text> <int>`` at the last whitespace token; `where` ('file:line') and `what` go in errors."""
    parts = line.strip().rsplit(None, 1)
    if len(parts) != 2:
        raise DatasetError(f"{where}: expected '{what} <id>', got {line!r}")
    try:
        value = int(parts[1])
    except ValueError:
        raise DatasetError(f"{where}: the last token must be an integer id, got {parts[1]!r} in {line!r}") from None
    if value < 0:
        raise DatasetError(f"{where}: negative id {value} in {line!r}")
    return parts[0], value


def read_class_ids(path: ListPath) -> dict[int, str]:
    """Parse a ``cname_cid*.txt`` file into {id: class name}, in file order; ids and names must be unique."""
    lines, _ = iter_lines(path)
    by_id: dict[int, str] = {}
    seen_names: dict[str, int] = {}
    for number, line in lines:
        where = f"{path}:{number}"
        name, cid = split_last(line, where, "<class name>")
        if cid in by_id:
            raise DatasetError(f"{where}: id {cid} already used for class {by_id[cid]!r}")
        if name in seen_names:
            raise DatasetError(f"{where}: class {name!r} already listed on line {seen_names[name]}")
        by_id[cid] = name
        seen_names[name] = number
    if not by_id:
        raise DatasetError(f"{path}: no classes listed")
    return by_id


def read_class_names(path: ListPath) -> list[str]:
    """Parse a plain class list (one name per line; blank lines and '#' comments skipped; no duplicates)."""
    lines, _ = iter_lines(path)
    names: dict[str, int] = {}
    for number, line in lines:
        name = line.strip()
        if name.startswith("#"):
            continue
        if name in names:
            raise DatasetError(f"{path}:{number}: class {name!r} already listed on line {names[name]}")
        if "/" in name or name in (".", ".."):
            raise DatasetError(f"{path}:{number}: {name!r} is not a valid class folder name")
        names[name] = number
    if not names:
        raise DatasetError(f"{path}: no classes listed")
    return list(names)


def check_relative_path(path: str, where: str) -> str:
    """Validate a list path (relative, '/'-separated, no '..') and strip a leading './'."""
    if ".." not in path and "//" not in path and not path.startswith(("/", "./")) and not path.endswith("/"):
        return path  # fast path for the 100k-line official lists
    while path.startswith("./"):
        path = path[2:]
    parts = path.split("/")
    if path.startswith("/") or ".." in parts or "" in parts:
        raise DatasetError(f"{where}: {path!r} must be a relative path inside the dataset root (no '..', no '//')")
    return path


def read_file_list(path: ListPath, classes: dict[int, str]) -> FileList:
    """Parse a ``<relative path> <id>`` list against {id: class}; the parent folder must be the class name."""
    lines, digest = iter_lines(path)
    entries: list[tuple[str, str]] = []
    for number, line in lines:
        where = f"{path}:{number}"
        rel, cid = split_last(line, where, "<relative path>")
        rel = check_relative_path(rel, where)
        name = classes.get(cid)
        if name is None:
            raise DatasetError(f"{where}: class id {cid} is not in the class list ({len(classes)} classes)")
        parts = rel.split("/")
        if len(parts) < 2 or parts[-2] != name:
            raise DatasetError(f"{where}: {rel!r} is not inside a folder named after its class {name!r} (id {cid})")
        entries.append((rel, name))
    return FileList(source=str(path), entries=entries, sha256=digest)


def format_file_list(entries: Iterable[tuple[str, int]]) -> str:
    """Render (path, id) entries in the official ``<path> <id>`` line format (the text regenerated lists hash)."""
    return "".join(f"{path} {cid}\n" for path, cid in entries)
