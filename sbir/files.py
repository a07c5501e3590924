"""File helpers every saved artefact shares: content hashes, atomic writes and the check of an output path.

Checkpoints, galleries, FAISS indices and the gallery journal are checksummed and written so that a
reader never sees half a file: the data goes to a temporary file in the same folder, then one rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from sbir.errors import UsageError

CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file and a rename."""
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def check_output(path: str | os.PathLike[str], *, want: str, overwrite: bool, option: str) -> Path:
    """``path`` as a place to write a ``want`` ("file" or "folder"), checked before any work: what is there of
    the other kind is refused, and so is something already there unless ``overwrite``; the parent is made."""
    target = Path(path)
    if want not in ("file", "folder"):
        raise ValueError(f"want must be 'file' or 'folder', got {want!r}")
    if want == "file" and target.is_dir():
        raise UsageError(f"{option} {target} is a folder; name the file to write")
    if want == "folder" and target.exists() and not target.is_dir():
        raise UsageError(f"{option} {target} is a file; name a folder to write into")
    if target.exists() and not overwrite and (want == "file" or any(target.iterdir())):
        raise UsageError(f"{option} {target} already exists; pass --overwrite to replace it, or name another")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or exc
        raise UsageError(f"{option} {target}: cannot create its folder {target.parent} ({reason})") from exc
    return target


def files_inside(root: str | os.PathLike[str], suffixes: tuple[str, ...]) -> list[Path]:
    """Sorted files under ``root`` whose suffix is one of ``suffixes``, never following a link out of ``root``:
    a link that leads outside it is refused by name (its file would be read, and stored, from elsewhere)."""
    base = Path(root).resolve()
    found, outside = [], []
    for folder, dirs, names in os.walk(base, followlinks=False):
        for name in [*names, *dirs]:
            path = Path(folder) / name
            if path.is_symlink() and not path.resolve().is_relative_to(base):
                outside.append(path)
        files = (Path(folder) / n for n in names if Path(n).suffix.lower() in suffixes)
        found += [path for path in files if path.is_file()]
    if outside:
        listed = ", ".join(str(p.relative_to(base)) for p in sorted(outside)[:5])
        raise UsageError(
            f"{base}: {len(outside)} link(s) lead outside the folder ({listed}); sbir never follows a link out of "
            "the folder it is given: copy those files in, or remove the links"
        )
    return sorted(found)


def read_format_json(path: Path, format_name: str, version: int, error: type[Exception], what: str) -> dict:
    """The JSON descriptor of a saved artefact at ``path``, checked to be ``format_name`` at ``version``; any
    other file (unreadable, another format or version) raises ``error`` naming ``what`` it should be."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"corrupt {what} {path}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != format_name:
        raise error(f"{path} is not an {format_name} {what}")
    if meta.get("version") != version:
        raise error(
            f"{path} has format version {meta.get('version')!r}; this code reads version {version}. "
            f"Rebuild the {what} with the current code"
        )
    return meta
