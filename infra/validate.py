"""Offline checks of deployment files, as strict as the servers that will read them.

KubeRay objects are checked against the vendored CRD schemas (``infra/schemas/kuberay/``) with unknown fields
refused, as the API server's structural-schema pruning would drop them; core Kubernetes objects with
``kubernetes-validate``; cluster-launcher configs against the schema Ray ships; a RayService's Serve config
against Ray Serve's own schema.
"""

from __future__ import annotations

import copy
import functools
import gzip
import json
from pathlib import Path
from typing import Any

import yaml

from sbir.errors import SbirError

SCHEMAS = Path(__file__).with_name("schemas") / "kuberay"
CRD_FILES = {"RayCluster": "ray.io_rayclusters", "RayJob": "ray.io_rayjobs", "RayService": "ray.io_rayservices"}
KUBERNETES_VERSION = "1.33.0"


class ManifestError(SbirError):
    """A deployment file the cluster would refuse or misread; the message names the file, field and rule."""


def _strict(schema: Any) -> Any:
    """Refuse unknown fields in every object schema that lists its properties (the API server prunes them)."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    """The strict ``v1`` openAPIV3Schema of a KubeRay kind."""
    if kind not in CRD_FILES:
        raise ManifestError(f"no KubeRay CRD for kind {kind!r}; known: {', '.join(CRD_FILES)}")
    path = SCHEMAS / f"{CRD_FILES[kind]}.yaml.gz"
    crd = yaml.safe_load(gzip.decompress(path.read_bytes()))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))


def _first_error(validator: Any, document: dict[str, Any]) -> str | None:
    import jsonschema

    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is None:
        return None
    where = ".".join(str(part) for part in error.absolute_path) or "<root>"
    return f"{where}: {error.message}"


def check_kuberay(document: dict[str, Any]) -> None:
    import jsonschema

    kind = document.get("kind", "")
    if document.get("apiVersion") != "ray.io/v1":
        raise ManifestError(f"{kind or 'object'}: apiVersion must be ray.io/v1, got {document.get('apiVersion')!r}")
    problem = _first_error(jsonschema.Draft7Validator(crd_schema(kind)), document)
    if problem:
        raise ManifestError(f"{kind} {document.get('metadata', {}).get('name', '?')}: {problem}")
    if kind == "RayService":
        from serve.config_file import validate as validate_serve_config

        validate_serve_config(yaml.safe_load(document["spec"]["serveConfigV2"]))


def check_core(document: dict[str, Any]) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.absolute_path) or "<root>"
        name = document.get("metadata", {}).get("name", "?")
        raise ManifestError(f"{document.get('kind')} {name}: {where}: {exc.message}") from None
    except kubernetes_validate.utils.SchemaNotFoundError:
        raise ManifestError(
            f"{document.get('apiVersion')} {document.get('kind')} is not a Kubernetes {KUBERNETES_VERSION} kind"
        ) from None


@functools.cache
def launcher_schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def check_launcher(document: dict[str, Any]) -> None:
    import jsonschema

    problem = _first_error(jsonschema.Draft7Validator(launcher_schema()), document)
    if problem:
        raise ManifestError(f"cluster config {document.get('cluster_name', '?')}: {problem}")


def check_document(document: dict[str, Any]) -> None:
    """Check one object by what it is: a KubeRay object, a core Kubernetes object, or a launcher config."""
    if "cluster_name" in document and "provider" in document:
        check_launcher(document)
    elif str(document.get("apiVersion", "")).startswith("ray.io/"):
        check_kuberay(document)
    elif "apiVersion" in document and "kind" in document:
        check_core(document)
    else:
        raise ManifestError("neither a Kubernetes object (apiVersion, kind) nor a Ray cluster config (cluster_name)")


def load_documents(path: str | Path) -> list[dict[str, Any]]:
    """The objects of a (multi-document) YAML file, empty documents left out."""
    return [doc for doc in yaml.safe_load_all(Path(path).read_text()) if doc]


def check_file(path: str | Path) -> int:
    """Check every object of a YAML file; returns how many there were."""
    try:
        documents = load_documents(path)
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(f"{path}: cannot read it as YAML: {exc}") from None
    for document in documents:
        try:
            check_document(document)
        except ManifestError as exc:
            raise ManifestError(f"{path}: {exc}") from None
    return len(documents)
