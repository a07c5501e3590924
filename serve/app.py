"""The application builder of the endpoint: ``serve.app:build_app`` (docs/serving.md).

``sbir serve``, ``serve run``, ``serve deploy`` and KubeRay's ``serveConfigV2`` all build the application
here from typed :class:`serve.settings.AppArgs`: Ingress -> (SketchEncoder, GalleryIndex, and a Reranker
for a method with a re-rank mode), each with its own replicas and resources from ``serve.*``.
(No ``from __future__ import annotations`` here: Ray reads the builder's annotation at run time.)
"""

from ray import serve

from sbir.errors import SbirError
from sbir.methods import get_family
from serve.deployments import GalleryIndex, Reranker, SketchEncoder
from serve.ingress import Ingress
from serve.model import resolve_serving
from serve.settings import AppArgs, AppSettings, settings_from_args


def build_app(args: AppArgs) -> serve.Application:
    """The Serve application for these arguments (Ray validates a config's ``args`` into :class:`AppArgs`)."""
    settings, config = settings_from_args(args)
    cfg = settings.serve
    device = config.eval.device
    encoder = SketchEncoder.options(**cfg.encoder.serve_options()).bind(
        cfg.max_batch_size, cfg.batch_wait_timeout_s, device
    )
    index = GalleryIndex.options(**cfg.index.serve_options()).bind()
    reranker = Reranker.options(**cfg.reranker.serve_options()).bind(device) if _wants_reranker(settings) else None
    return Ingress.options(**cfg.ingress.serve_options()).bind(settings, encoder, index, reranker)


def _wants_reranker(settings: AppSettings) -> bool:
    """A re-rank deployment for methods with a re-rank mode (known from the checkpoint, without loading it)."""
    try:
        resolved = resolve_serving(settings.model, settings.gallery, settings.tracking_uri, settings.runs_dir)
    except SbirError:
        return True  # the ingress reports the problem on /readyz; keep the deployment graph complete
    return get_family(resolved.method).reranks
