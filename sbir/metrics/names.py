"""Metric names, their definitions, and a plain-text table helper.

Every number the evaluator reports carries one of these names (docs/metrics.md#metric-names): there is never an
unnamed "mAP". The cut (default 200) and the precision depths (default 100 and 200) are part of the
names, so ``metric_names(cut=100, ks=(50,))`` gives ``map_100_voc_strict``, ``p_50`` and so on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: Count entries that accompany every metric dict (not metrics themselves).
COUNT_NAMES: tuple[str, ...] = ("n_queries", "n_queries_no_relevant")
#: Count entries added when a pair index (fine-grained setting) is given.
PAIR_COUNT_NAMES: tuple[str, ...] = ("n_queries_pair", "n_queries_no_pair")


@dataclass(frozen=True)
class MetricInfo:
    """One named metric: what it computes and who uses it (docs/metrics.md#metric-names, #published-tables)."""

    name: str
    definition: str
    used_by: str
    percent: bool = False


def _dedupe(values: Iterable[int], what: str) -> tuple[int, ...]:
    out: list[int] = []
    for v in values:
        if isinstance(v, bool) or int(v) != v or int(v) < 1:
            raise ValueError(f"{what} must contain positive integers, got {v!r}")
        if int(v) not in out:
            out.append(int(v))
    return tuple(out)


#: The two fine-grained galleries (docs/metrics.md#fine-grained-galleries): every paired photo of the test
#: classes once, or only the paired photos of the query's own class.
FG_GALLERIES: tuple[str, ...] = ("pooled", "in_class")
_FG_GALLERY_TEXT = {
    "pooled": "among every paired photo of the test classes, each once",
    "in_class": "among the paired photos of the query's own class",
}


def metric_infos(
    cut: int = 200, ks: Sequence[int] = (100, 200), acc_ks: Sequence[int] | None = None
) -> list[MetricInfo]:
    """The metric variants in report order, with definitions, for a given cut and depth list.

    ``acc_ks`` is None when no pair index is used (category-level settings); then no ``acc_K``.
    """
    if isinstance(cut, bool) or int(cut) != cut or cut < 1:
        raise ValueError(f"cut must be a positive integer, got {cut!r}")
    c = int(cut)
    infos = [
        MetricInfo(
            "map_all_voc",
            "AP over the full ranking, VOC all-point interpolated precision, / R",
            "SAKE, ZSE-SBIR, DSN (ZSE-SBIR T1 'mAP')",
        ),
        MetricInfo(
            "map_all_plain",
            "AP over the full ranking, plain precision, / R",
            "sklearn AP (SEM-PCYC, Doodle2Search), torchmetrics (Sketch_LVM, ClipPrompt)",
        ),
        MetricInfo(
            f"map_{c}_voc_strict",
            f"AP over the top {c}, VOC envelope within the cut, / min(R, {c})",
            f"SAKE, ZSE-SBIR (ZSE-SBIR T1 Sketchy-21 mAP@{c})",
        ),
        MetricInfo(f"map_{c}_plain_strict", f"AP over the top {c}, plain precision, / min(R, {c})", "standard IR AP@k"),
        MetricInfo(
            f"map_{c}_plain_lenient",
            f"AP over the top {c}, plain precision, / TP_{c} (0 if TP_{c} = 0)",
            f"SEM-PCYC (sklearn on the top-{c} slice), torchmetrics top_k (ClipPrompt)",
        ),
        MetricInfo(f"map_{c}_plain_overR", f"AP over the top {c}, plain precision, / R", "third-party '/ R' logging"),
    ]
    for k in _dedupe(ks, "ks"):
        infos.append(
            MetricInfo(
                f"p_{k}",
                f"TP_{k} / {k} (min({k}, N) when the gallery is smaller)",
                "SAKE, SEM-PCYC, torchmetrics, CLIP-AT (presumed)",
            )
        )
    for k in _dedupe(ks, "ks"):
        infos.append(MetricInfo(f"p_{k}_minR", f"TP_m / m with m = min({k}, R)", "ZSE-SBIR T1 P@K"))
    infos.append(
        MetricInfo(f"rel_at_{c}", f"relevance (0/1) of the item at rank {c} (min({c}, N))", "Doodle2Search; diagnostic")
    )
    if acc_ks is not None:
        for k in _dedupe(acc_ks, "acc_ks"):
            infos.append(
                MetricInfo(
                    f"acc_{k}",
                    f"% of queries whose paired photo has rank <= {k}",
                    "fine-grained: CLIP-AT FG table, QMUL",
                    percent=True,
                )
            )
        for gallery in FG_GALLERIES:
            for k in _dedupe(acc_ks, "acc_ks"):
                infos.append(
                    MetricInfo(
                        f"acc_{k}_{gallery}",
                        f"% of queries whose paired photo has rank <= {k} {_FG_GALLERY_TEXT[gallery]}",
                        "fine-grained: CLIP-AT FG table (pooled presumed)"
                        if gallery == "pooled"
                        else "fine-grained, per class",
                        percent=True,
                    )
                )
    return infos


def metric_names(cut: int = 200, ks: Sequence[int] = (100, 200), acc_ks: Sequence[int] | None = None) -> list[str]:
    """Names of the metric variants (no counts) in report order; see :func:`metric_infos`."""
    return [info.name for info in metric_infos(cut, ks, acc_ks)]


def format_metrics(metrics: Mapping[str, float], *, markdown: bool = False, digits: int = 4) -> str:
    """Render a metric dict as an aligned two-column table (or a Markdown table).

    Counts (``n_*``) print as integers, ``acc_*`` as percentages with two decimals, everything else
    with ``digits`` decimals. Order follows the dict.
    """

    def fmt(name: str, value: float) -> str:
        if name.startswith("n_"):
            return str(int(value))
        if value != value:  # NaN
            return "nan"
        if name.startswith("acc_"):
            return f"{value:.2f}"
        return f"{value:.{digits}f}"

    rows = [(name, fmt(name, float(value))) for name, value in metrics.items()]
    if markdown:
        lines = ["| metric | value |", "|---|---:|"]
        lines += [f"| `{n}` | {v} |" for n, v in rows]
        return "\n".join(lines)
    width = max([len("metric"), *(len(n) for n, _ in rows)])
    vwidth = max([len("value"), *(len(v) for _, v in rows)])
    lines = [f"{'metric'.ljust(width)}  {'value'.rjust(vwidth)}", f"{'-' * width}  {'-' * vwidth}"]
    lines += [f"{n.ljust(width)}  {v.rjust(vwidth)}" for n, v in rows]
    return "\n".join(lines)
