"""MLflow tracking for sbir runs, by responsibility (none of it imports Ray; docs/tracking.md).

* ``uri`` — where runs are stored: the tracking-URI policy and clients bound to one URI;
* ``tracker`` — one run: params, metrics, tags, artifacts, its final status;
* ``registry`` — registered models, versions and the ``champion`` rule;
* ``references`` — checkpoint references (paths, run ids, ``runs:/``, ``models:/``) to local directories.
"""

from pipelines.tracking.references import (
    BadCheckpointReference,
    CheckpointNotFound,
    ResolvedCheckpoint,
    is_tracked_reference,
    resolve_checkpoint,
    resolve_reference,
)
from pipelines.tracking.registry import (
    CHAMPION_ALIAS,
    CHECKPOINT_ARTIFACT,
    GALLERY_ARTIFACT,
    Registration,
    RegistryError,
    register_checkpoint,
)
from pipelines.tracking.tracker import MAX_PARAM_VAL_LENGTH, TRUNCATION_MARKER, Tracker, flatten_params
from pipelines.tracking.uri import DEFAULT_DB, TrackingError, resolve_tracking_uri
from sbir.config import registered_model_name as model_name  # the default registered name

__all__ = [
    "CHAMPION_ALIAS",
    "CHECKPOINT_ARTIFACT",
    "DEFAULT_DB",
    "GALLERY_ARTIFACT",
    "MAX_PARAM_VAL_LENGTH",
    "TRUNCATION_MARKER",
    "BadCheckpointReference",
    "CheckpointNotFound",
    "Registration",
    "RegistryError",
    "ResolvedCheckpoint",
    "Tracker",
    "TrackingError",
    "flatten_params",
    "is_tracked_reference",
    "model_name",
    "register_checkpoint",
    "resolve_checkpoint",
    "resolve_reference",
    "resolve_tracking_uri",
]
