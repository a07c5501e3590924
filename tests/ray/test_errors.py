"""Project errors raised inside Ray (a Ray Data task, a training worker) come back as themselves."""

from __future__ import annotations

import numpy as np
import pytest

from sbir.data.records import DatasetError
from sbir.errors import project_error


def _bad_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    raise DatasetError(f"class folder {int(batch['id'][0])} is missing")


def test_a_project_error_in_a_ray_data_task_is_found_inside_the_wrapper(ray_cluster):
    import ray

    from pipelines.ray_runtime import unwrap_ray_error

    with pytest.raises(Exception) as caught:
        ray.data.range(4).map_batches(_bad_batch, batch_size=2).take_all()
    inner = unwrap_ray_error(caught.value)
    assert type(inner) is DatasetError and str(inner).startswith("class folder") and str(inner).endswith("is missing")
    assert project_error(caught.value) is inner


def test_a_project_error_in_a_training_worker_is_raised_by_the_driver(ray_cluster, tmp_path):
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipelines.ray_runtime import unwrap_ray_error

    def loop(_config):
        raise DatasetError("worker could not read its shard")

    trainer = TorchTrainer(
        loop,
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(name="fails-in-worker", storage_path=str(tmp_path)),
    )
    with pytest.raises(Exception) as caught:
        trainer.fit()
    inner = unwrap_ray_error(caught.value)
    assert type(inner) is DatasetError and "could not read its shard" in str(inner)
