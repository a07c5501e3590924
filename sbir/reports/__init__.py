"""Evaluation reports: precision-recall curves, retrieval grids, and JSON/Markdown/HTML report pages."""

from sbir.reports.curves import chance_precision, plot_precision_recall, precision_recall_curve
from sbir.reports.grid import grid_size, retrieval_grid, sample_queries, top_k_rankings
from sbir.reports.page import MetricRow, ReportFiles, ReportRow, metric_rows, to_jsonable, write_report

__all__ = [
    "MetricRow",
    "ReportFiles",
    "ReportRow",
    "chance_precision",
    "grid_size",
    "metric_rows",
    "plot_precision_recall",
    "precision_recall_curve",
    "retrieval_grid",
    "sample_queries",
    "to_jsonable",
    "top_k_rankings",
    "write_report",
]
