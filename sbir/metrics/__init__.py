"""Retrieval metrics: every named AP / precision / accuracy variant of docs/metrics.md.

Pure NumPy/PyTorch (no Ray), chunked over queries so memory stays bounded.
"""

from sbir.metrics.names import COUNT_NAMES, PAIR_COUNT_NAMES, MetricInfo, format_metrics, metric_infos, metric_names
from sbir.metrics.ranking import (
    TIE_BREAKS,
    MetricInputError,
    TieBreak,
    compute_metrics,
    compute_per_query_metrics,
    tie_keys,
    tie_spread,
)

__all__ = [
    "COUNT_NAMES",
    "PAIR_COUNT_NAMES",
    "TIE_BREAKS",
    "MetricInfo",
    "MetricInputError",
    "TieBreak",
    "compute_metrics",
    "compute_per_query_metrics",
    "format_metrics",
    "metric_infos",
    "metric_names",
    "tie_keys",
    "tie_spread",
]
