"""`make gpu-check`'s script end to end on the CPU with tiny models (`--cpu-smoke`): its wiring, not its figures."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.slow
def test_the_gpu_check_trains_evaluates_indexes_and_serves_on_the_cpu(ray_cluster, tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        gpu_check = importlib.import_module("gpu_check")
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "figures.json"
    assert gpu_check.main(["--cpu-smoke", "--methods", "zse", "--steps", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (zse,) = report["methods"]
    assert (zse["method"], zse["steps"], zse["gpus"]) == ("zse", 2, 0)
    assert zse["images_per_second_per_gpu"] > 0 and zse["gallery_images_per_second"] > 0
    assert zse["query_p50_ms"] > 0 and zse["eval_seconds"] > 0
    assert set(zse["test_metrics"]) == {"ret", "rn_rerank"}, "the preset's evaluation modes, on the unseen classes"
    assert zse["peak_gpu_memory_mb"] is None, "no CUDA, no GPU memory figure"
