"""The application builder of the endpoint: ``serve.app:build_app`` (docs/serving.md).

``sbir serve``, ``serve run``, ``serve deploy`` and KubeRay's ``serveConfigV2`` all build the application
here from typed :class:`serve.settings.AppArgs`: the Ingress (HTTP, the sketch encoder and, with one shard,
the gallery) and, with ``serve.gallery.shards`` = N > 1, N GalleryShard deployments, each with its own
replicas and resources from ``serve.*``.
(No ``from __future__ import annotations`` here: Ray reads the builder's annotation at run time.)
"""

from ray import serve

from serve.ingress import Ingress
from serve.settings import AppArgs, settings_from_args
from serve.shards import GalleryShardDeployment, shard_name


def build_app(args: AppArgs) -> serve.Application:
    """The Serve application for these arguments (Ray validates a config's ``args`` into :class:`AppArgs`)."""
    settings, config = settings_from_args(args)
    cfg = settings.serve
    device = config.eval.device
    gallery = cfg.gallery
    shards = []
    if gallery.shards > 1:
        for index in range(gallery.shards):
            options = gallery.shard_options(index)
            shards.append(
                GalleryShardDeployment.options(name=shard_name(index), **options).bind(
                    index,
                    gallery.shards,
                    device,
                    gallery.shard.compute_threads,
                    cfg.max_batch_size,
                    gallery.sync_interval_s,
                )
            )
    return Ingress.options(**cfg.ingress.serve_options()).bind(settings, device, shards)
