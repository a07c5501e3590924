"""Fixtures the Ray tests share across modules."""

from __future__ import annotations

import pytest

from tests.ray.serving import Served, build_registered_gallery, prepare_small, register_random_checkpoint


@pytest.fixture(scope="session")
def served(ray_cluster, tmp_path_factory) -> Served:
    """A randomly initialised ZSE-SBIR checkpoint registered as champion, with its unseen-class gallery.

    The serving and the page tests check rankings against the offline path and the page's behaviour,
    not accuracy, so one random model built once serves both.
    """
    tmp = tmp_path_factory.mktemp("serve")
    root, split, prepared = prepare_small(tmp)
    runs = tmp / "runs"
    runs.mkdir()
    served = Served(root, prepared, f"sqlite:///{runs / 'mlflow.db'}", runs, "sbir-zse-servetest", [], "synthetic_zse")
    register_random_checkpoint(served, seed=0, metric=0.1)
    build_registered_gallery(served, served.reference)
    served.split = split
    return served
