"""`sbir data prepare`: any dataset layout -> Parquet shards + a manifest, with Ray Data.

Rows hold the encoded image bytes (no resizing: method-specific preprocessing happens at load time,
so one prepared dataset serves both models) and the metadata of :class:`sbir.data.records.ImageRecord`.
The manifest is written last and names the data folder it describes, so a half-written run never
looks complete; re-running on the same inputs finds the manifest and does nothing.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray
from PIL import Image, UnidentifiedImageError
from ray.data.expressions import col

from pipelines import storage
from sbir.config import Config, ConfigError
from sbir.data.manifest import FORMAT_VERSION, PreparedDataMissing, PreparedManifest
from sbir.data.records import DatasetSplit
from sbir.errors import SbirError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PENDING = ".sbir-pending-shards.json"  # shard folders being written: what an interrupted run leaves
BadFilePolicy = Literal["fail", "skip"]


class BadFilesError(SbirError):
    """Some source images are missing or unreadable and the policy is `fail`."""

    def __init__(self, bad: list[dict[str, str]]) -> None:
        shown = "; ".join(f"{b['path']}: {b['reason']}" for b in bad[:10])
        more = f" (+{len(bad) - 10} more)" if len(bad) > 10 else ""
        super().__init__(f"{len(bad)} bad file(s): {shown}{more}. Fix them or re-run with --on-bad-file skip")
        self.bad = bad


@dataclass(frozen=True)
class DataSource:
    """A dataset on disk (or S3) and the split to read from it: what `ensure_prepared` prepares."""

    layout: str
    root: str
    split: str
    val_fraction: float = 0.0
    val_seed: int = 0
    pairs_file: str | None = None

    @property
    def name(self) -> str:
        return f"{self.layout}:{self.root}"

    def read(self) -> DatasetSplit:
        """The split's records (no Ray; raises DatasetError naming what is missing)."""
        from sbir.data.readers import read_split

        return read_split(
            self.layout,
            self.root,
            self.split,
            val_fraction=self.val_fraction,
            val_seed=self.val_seed,
            pairs_file=self.pairs_file,
        )


def ensure_prepared(
    target: str,
    source: DataSource,
    *,
    reuse_existing: bool,
    before_prepare: Callable[[DatasetSplit], None] | None = None,
) -> PreparedManifest:
    """The prepared dataset at `target`: as it is when it holds a manifest and `reuse_existing`, else
    `source` prepared into it (idempotent: unchanged inputs are not prepared again).

    The source is read first, so a missing root fails before Ray starts; `before_prepare` (checks of the
    split, then e.g. connecting to Ray) runs only when there is something to prepare.
    """
    if reuse_existing:
        try:
            return read_manifest(target)
        except PreparedDataMissing:
            if storage.is_s3(target):
                raise
    split = source.read()
    storage.check_writable(target)
    if before_prepare is not None:
        before_prepare(split)
    return prepare_dataset(split, target, source=source.name)


def fingerprint(split: DatasetSplit) -> str:
    """Digest of everything that defines a prepared dataset: records, roles, class ids, format, and each
    source file's size and modification time (so fixing or replacing a file makes a re-run redo the work)."""
    h = hashlib.sha256(f"{FORMAT_VERSION}|{split.layout}|{split.root}|{split.split}".encode())
    h.update("|".join(split.class_names).encode())
    h.update(f"|{len(split.train_classes)}|{len(split.val_classes)}".encode())
    fs, base = storage.resolve(split.root)
    infos = fs.get_file_info([storage.join(base, r.path) for r in split.records])
    for r, info in zip(split.records, infos, strict=True):
        stamp = f"{info.size}|{info.mtime_ns}" if info.type == pafs.FileType.File else "absent"
        h.update(f"\n{r.path}|{r.class_name}|{r.modality}|{r.role}|{r.pair_id}|{stamp}".encode())
    return h.hexdigest()


def load_images(batch: dict[str, np.ndarray], root: str) -> dict[str, Any]:
    """Ray Data UDF: read each file's bytes, check it decodes, and record a checksum or the reason it failed.

    A task, not an actor pool: actors of Ray Data take their arguments from the object store, and Ray logs
    an error line about restarting such actors on every run; a filesystem handle is cheap to make per batch.
    """
    fs, base = storage.resolve(root)
    images, digests, reasons = [], [], []
    for rel in batch["path"]:
        data, reason = b"", ""
        try:
            with fs.open_input_stream(storage.join(base, str(rel))) as stream:
                data = stream.read()
            with Image.open(io.BytesIO(data)) as img:
                img.load()
        except FileNotFoundError:
            reason = "missing"
        except UnidentifiedImageError:
            reason = "unreadable: not a recognised image format"
        except Exception as exc:
            reason = f"unreadable: {type(exc).__name__}: {exc}"
        images.append(b"" if reason else data)
        digests.append("" if reason else hashlib.sha256(data).hexdigest())
        reasons.append(reason)
    batch = dict(batch)
    batch["image"] = np.array(images, dtype=object)
    batch["sha256"] = np.array(digests, dtype=object)
    batch["bad_reason"] = np.array(reasons, dtype=object)
    return batch


def _rows(split: DatasetSplit) -> list[dict[str, Any]]:
    ids = {name: i for i, name in enumerate(split.class_names)}
    return [{**asdict(r), "pair_id": r.pair_id or "", "class_id": ids[r.class_name]} for r in split.records]


def training_data(config: Config) -> tuple[str, DataSource]:
    """Where a run's prepared data is (``data.prepared``, else under the run dir) and what it is made from."""
    data = config.data
    target = data.prepared or str(Path(config.run.dir).resolve() / "prepared" / config.setting)
    source = DataSource(data.layout, data.root, data.split, data.val_fraction, data.val_seed, data.pairs_file)
    return target, source


def prepare_training_data(config: Config, *, check_selection: bool = True) -> tuple[str, PreparedManifest]:
    """A run's prepared dataset: ``data.prepared`` as it is if it holds a manifest, else prepared from
    ``data.root``. The split is read, and a missing root or too few validation classes reported, before
    Ray is started."""
    from pipelines.ray_runtime import ensure_ray

    def before_prepare(split: DatasetSplit) -> None:
        if check_selection:
            check_validation_classes(config, split.val_classes)
        ensure_ray(config.run.ray_address, timeout_s=config.run.ray_connect_timeout_s)

    target, source = training_data(config)
    manifest = ensure_prepared(target, source, reuse_existing=bool(config.data.prepared), before_prepare=before_prepare)
    if check_selection:
        check_validation_classes(config, manifest.classes.val)
    return target, manifest


MIN_VALIDATION_CLASSES = 2


def check_validation_classes(config: Config, val_classes: list[str]) -> None:
    """Model selection on held-out seen classes needs at least two of them: with one, every validation
    query's relevant photos are the whole gallery and the metric is 1.0 whatever the model does."""
    if config.train.model_selection != "seen_val" or not val_classes:
        return  # no validation classes: the latest checkpoint is kept (warned when the trainer is built)
    if len(val_classes) < MIN_VALIDATION_CLASSES:
        raise ConfigError(
            f"data.val_fraction={config.data.val_fraction} holds out {len(val_classes)} validation class "
            f"({', '.join(val_classes)}); model selection needs at least {MIN_VALIDATION_CLASSES} (its metric would "
            "always be 1.0): raise data.val_fraction, or set it to 0 to keep the latest checkpoint"
        )


def prepared_already(split: DatasetSplit, out: str, on_bad_file: BadFilePolicy = "fail") -> PreparedManifest | None:
    """The manifest under `out` when it was prepared from these very inputs (no Ray needed to tell), else None."""
    fs, base = storage.resolve(out)
    if not storage.exists(fs, storage.join(base, MANIFEST)):
        return None
    existing = read_manifest(out)
    same_inputs = existing.fingerprint == fingerprint(split) + f"-{on_bad_file}"
    return existing if same_inputs and storage.exists(fs, storage.join(base, existing.data_dir)) else None


def prepare_dataset(
    split: DatasetSplit,
    out: str,
    *,
    on_bad_file: BadFilePolicy = "fail",
    rows_per_file: int = 2000,
    source: str | None = None,
) -> PreparedManifest:
    """Write `split` as Parquet shards under `out` (local path or s3://) and return the manifest."""
    if on_bad_file not in ("fail", "skip"):
        raise ValueError(f"on_bad_file must be 'fail' or 'skip', got {on_bad_file!r}")
    if not split.records:
        raise SbirError(f"split {split.split!r} of {split.root} has no records to prepare")
    existing = prepared_already(split, out, on_bad_file)
    if existing is not None:
        logger.info("%s is already prepared from the same inputs; nothing to do", out)
        return existing

    fs, base = storage.resolve(out)
    manifest_path = storage.join(base, MANIFEST)
    digest = fingerprint(split) + f"-{on_bad_file}"
    superseded = _previous_data_dir(out)
    started = time.perf_counter()
    blocks = max(1, min(64, len(split.records) // 256))
    ds = ray.data.from_items(_rows(split), override_num_blocks=blocks)
    ds = ds.map_batches(
        load_images,
        fn_kwargs={"root": split.root},
        batch_size=64,
        compute=ray.data.TaskPoolStrategy(size=min(2, blocks)),
        num_cpus=0.5,
    )
    ds = ds.materialize()
    bad = [
        {"path": row["path"], "reason": row["bad_reason"]}
        for row in ds.filter(expr=col("bad_reason") != "").select_columns(["path", "bad_reason"]).take_all()
    ]
    if bad and on_bad_file == "fail":
        raise BadFilesError(sorted(bad, key=lambda b: b["path"]))
    good = ds.filter(expr=col("bad_reason") == "").drop_columns(["bad_reason"])
    data_dir = f"data-{digest[:12]}-{uuid.uuid4().hex[:8]}"
    _record_pending(fs, base, data_dir)  # before writing: an interrupted write is still ours to clean up
    good.write_parquet(storage.join(base, data_dir), filesystem=fs, max_rows_per_file=rows_per_file)
    checks = sorted((r["path"], r["sha256"]) for r in good.select_columns(["path", "sha256"]).take_all())
    elapsed = time.perf_counter() - started

    bad_paths = {b["path"] for b in bad}
    kept = [r for r in split.records if r.path not in bad_paths]
    manifest = PreparedManifest.from_json(
        {
            "format_version": FORMAT_VERSION,
            "fingerprint": digest,
            "data_dir": data_dir,
            "source": source or f"{split.layout}:{split.root}",
            "layout": split.layout,
            "split": split.split,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "classes": {"train": split.train_classes, "val": split.val_classes, "test": split.test_classes},
            "counts": _counts(kept),
            "num_rows": len(kept),
            "content_sha256": hashlib.sha256("\n".join(f"{p} {s}" for p, s in checks).encode()).hexdigest(),
            "bad_files": sorted(bad, key=lambda b: b["path"]),
            "on_bad_file": on_bad_file,
            "images_per_second": round(len(split.records) / elapsed, 1) if elapsed > 0 else None,
        },
        out,
    )
    storage.write_json(fs, manifest_path, manifest.to_json())
    _remove_our_old_shards(fs, base, superseded, keep=data_dir)
    logger.info(
        "prepared %d images (%d bad) into %s at %.0f img/s",
        len(kept),
        len(bad),
        out,
        manifest.images_per_second or 0,
    )
    return manifest


def _previous_data_dir(out: str) -> str | None:
    """The shard folder the manifest already under ``out`` names (replaced by this preparation), if any."""
    try:
        return read_manifest(out).data_dir
    except (PreparedDataMissing, storage.StorageError):
        return None


def _record_pending(fs: pafs.FileSystem, base: str, data_dir: str) -> None:
    """Note a shard folder about to be written, so that only folders this project wrote are ever removed."""
    path = storage.join(base, PENDING)
    pending = storage.read_json(fs, path) if storage.exists(fs, path) else []
    storage.write_json(fs, path, sorted({*pending, data_dir}))


def _remove_our_old_shards(fs: pafs.FileSystem, base: str, superseded: str | None, keep: str) -> None:
    """Remove the shards of the manifest this one replaced and those of interrupted preparations (recorded in
    PENDING), never anything else in the folder: other files there are the user's."""
    path = storage.join(base, PENDING)
    ours = set(storage.read_json(fs, path)) if storage.exists(fs, path) else set()
    for name in sorted((ours | {superseded}) - {keep, None}):
        if storage.exists(fs, storage.join(base, name)):
            logger.info("removing the shards of an earlier preparation: %s", name)
            storage.delete_dir(fs, storage.join(base, name))
    fs.delete_file(path)


def _counts(records: list) -> dict[str, Any]:
    by_role_modality = Counter((r.role, r.modality) for r in records)
    by_class = Counter((r.role, r.modality, r.class_name) for r in records)
    counts: dict[str, Any] = {}
    for (role, modality), n in sorted(by_role_modality.items()):
        counts.setdefault(role, {})[modality] = {"total": n, "per_class": {}}
    for (role, modality, name), n in sorted(by_class.items()):
        counts[role][modality]["per_class"][name] = n
    return counts


def read_manifest(prepared: str) -> PreparedManifest:
    """Manifest of a prepared dataset, or an error saying it is missing or incomplete."""
    fs, base = storage.resolve(prepared)
    path = storage.join(base, MANIFEST)
    try:
        found = storage.exists(fs, path)
    except OSError as exc:  # e.g. an S3 endpoint that does not answer
        raise storage.StorageError(f"cannot read {prepared}: {' '.join(str(exc).split())[:300]}") from exc
    if not found:
        raise PreparedDataMissing(f"{prepared} is not a prepared dataset (no {MANIFEST}); run `sbir data prepare`")
    try:
        payload = storage.read_json(fs, path)
    except (OSError, ValueError) as exc:
        raise PreparedDataMissing(f"{prepared}/{MANIFEST}: unreadable ({exc}); prepare the dataset again") from exc
    return PreparedManifest.from_json(payload, f"{prepared}/{MANIFEST}")


def use_fast_parquet_reader() -> None:
    """Read Parquet with Ray Data's task-based (V1) datasource.

    Ray 2.60's default V2 reader starts FooterReader actors on every execution: measured 6-11 s to read
    one small shard on 2 cores against 0.2 s for V1, which made every training epoch input-bound.
    """
    ray.data.DataContext.get_current().use_datasource_v2 = False


def read_prepared(prepared: str, columns: list[str] | None = None) -> ray.data.Dataset:
    """The prepared rows as a Ray Dataset (local path or s3://)."""
    manifest = read_manifest(prepared)
    fs, base = storage.resolve(prepared)
    use_fast_parquet_reader()
    return ray.data.read_parquet(storage.join(base, manifest.data_dir), filesystem=fs, columns=columns)


def schema() -> pa.Schema:
    """Columns of a prepared dataset (documentation and tests)."""
    return pa.schema(
        [
            ("path", pa.string()),
            ("class_name", pa.string()),
            ("modality", pa.string()),
            ("role", pa.string()),
            ("pair_id", pa.string()),
            ("class_id", pa.int64()),
            ("image", pa.binary()),
            ("sha256", pa.string()),
        ]
    )
