"""Local paths and s3:// URIs behind one pyarrow filesystem, with the standard AWS settings.

The S3 endpoint comes from ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) and credentials from the
usual environment variables. A bare ``pyarrow.fs.S3FileSystem()`` ignores the endpoint variable, so
it is passed explicitly as ``endpoint_override``.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from sbir.errors import SbirError

CONNECT_TIMEOUT_S = 10.0  # an S3 endpoint that does not answer fails in seconds, not after minutes of retries


class StorageError(SbirError):
    """A storage location that is malformed, unreachable, missing or not writable (the message names it)."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3://bucket/prefix URI."""
    if is_s3(uri):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise StorageError(f"{uri!r} has no bucket; use s3://<bucket>/<prefix>")
        kwargs: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
        }
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            kwargs["endpoint_override"] = endpoint
            if endpoint.startswith("http://"):
                kwargs["scheme"] = "http"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), f"{parsed.netloc}{parsed.path}".rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).absolute())


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_json(fs: pafs.FileSystem, path: str) -> Any:
    with fs.open_input_stream(path) as stream:
        return json.loads(stream.read().decode())


def write_json(fs: pafs.FileSystem, path: str, payload: Any) -> None:
    """Write JSON so readers never see a partial file (temp + rename locally; S3 puts are atomic)."""
    data = json.dumps(payload, indent=2).encode()
    parent = posixpath.dirname(path)
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with fs.open_output_stream(tmp) as stream:
            stream.write(data)
        os.replace(tmp, path)
    else:
        with fs.open_output_stream(path) as stream:
            stream.write(data)


def delete_dir(fs: pafs.FileSystem, path: str) -> None:
    if exists(fs, path):
        fs.delete_dir(path)


def _endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "the default AWS endpoint"


def check_writable(uri: str) -> None:
    """Fail now, naming the problem, when `uri` cannot be written: a missing bucket, an endpoint that does
    not answer, a read-only folder. Commands call it before their expensive part."""
    fs, path = resolve(uri)
    if is_s3(uri):
        bucket = path.split("/", 1)[0]
        try:
            info = fs.get_file_info(bucket)
        except OSError as exc:
            raise StorageError(
                f"cannot reach S3 at {_endpoint()} for {uri}: {' '.join(str(exc).split())[:300]}"
            ) from exc
        if info.type == pafs.FileType.NotFound:
            raise StorageError(f"{uri}: bucket {bucket!r} does not exist at {_endpoint()}")
        return
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".sbir-write-check-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StorageError(f"cannot write to {folder}: {exc.strerror or exc}") from exc
