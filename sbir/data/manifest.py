"""The manifest of a prepared dataset (``manifest.json`` beside its Parquet shards), as a typed object.

Written last by ``sbir data prepare`` (``pipelines.prepare``), so a half-written dataset never looks
complete; read by training, evaluation and the CLI through :meth:`PreparedManifest.from_json`. Fields
are described in docs/pipelines.md.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sbir.errors import SbirError

FORMAT_VERSION = 1


class PreparedDataError(SbirError):
    """A prepared dataset is missing, incomplete or of another format version."""


class PreparedDataMissing(PreparedDataError, FileNotFoundError):
    """The location holds no manifest (never prepared, or a half-written run)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassLists(_Strict):
    """Class names per role; global class ids run train, then val, then test (as in ``DatasetSplit``)."""

    train: list[str]
    val: list[str] = Field(default_factory=list)
    test: list[str] = Field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [*self.train, *self.val, *self.test]

    @property
    def by_id(self) -> dict[int, str]:
        return dict(enumerate(self.names))


class ModalityCount(_Strict):
    total: int
    per_class: dict[str, int] = Field(default_factory=dict)


class BadFile(_Strict):
    path: str
    reason: str


class PreparedManifest(_Strict):
    """What a prepared dataset holds and where its shards are."""

    format_version: Literal[1] = FORMAT_VERSION
    fingerprint: str  # digest of the inputs: records, roles, class ids, file sizes and times, bad-file policy
    data_dir: str  # the shard folder, relative to the manifest
    source: str  # <layout>:<root>
    layout: str
    split: str
    created: str
    classes: ClassLists
    counts: dict[str, dict[str, ModalityCount]]  # role -> modality -> counts
    num_rows: int
    content_sha256: str  # digest over (path, sha256 of the bytes) of every row
    bad_files: list[BadFile] = Field(default_factory=list)
    on_bad_file: Literal["fail", "skip"] = "fail"
    images_per_second: float | None = None

    @classmethod
    def from_json(cls, payload: Any, where: str) -> PreparedManifest:
        """Validate a parsed manifest; ``where`` names it in errors."""
        if isinstance(payload, dict) and payload.get("format_version") != FORMAT_VERSION:
            raise PreparedDataError(
                f"{where}: manifest format {payload.get('format_version')!r}, this sbir reads {FORMAT_VERSION}; "
                "prepare the dataset again with `sbir data prepare`"
            )
        try:
            return cls.model_validate(payload)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            raise PreparedDataError(f"{where}: invalid manifest ({problems})") from None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def role_total(self, role: str) -> int:
        return sum(count.total for count in self.counts.get(role, {}).values())
