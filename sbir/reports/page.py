"""Evaluation report pages: one run's metrics, run information, images and warnings as JSON, Markdown and HTML.

The HTML page is static and self-contained (inline CSS, no scripts); the only outside files it refers to are
the PNGs, by paths relative to the report folder, so the folder can be moved or served as a whole.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

logger = logging.getLogger(__name__)

JSON_NAME = "report.json"
MARKDOWN_NAME = "report.md"
HTML_NAME = "report.html"

#: Descriptions of the count entries that accompany every metric dict (see docs/metrics.md).
COUNT_DESCRIPTIONS: dict[str, str] = {
    "n_queries": "queries averaged over (at least one relevant gallery item)",
    "n_queries_no_relevant": "queries with no relevant gallery item (excluded)",
    "n_queries_pair": "queries whose paired photo is in the gallery",
    "n_queries_no_pair": "queries without a paired photo in the gallery (excluded from acc_K)",
}


@dataclass(frozen=True)
class ReportFiles:
    """Paths of the three files written by :func:`write_report`."""

    json: Path
    markdown: Path
    html: Path


@dataclass(frozen=True)
class ReportRow:
    """One row of pictures shown side by side, e.g. a query's top-k results beside its explanations."""

    caption: str
    images: dict[str, str | Path]


@dataclass(frozen=True)
class MetricRow:
    """One row of the metric table: a metric name, its description (may be empty) and one value per run."""

    name: str
    description: str
    values: tuple[float | None, ...]


# --------------------------------------------------------------------------- conversion helpers


def to_jsonable(value: Any) -> Any:
    """A JSON-safe copy: NumPy/torch scalars and arrays to Python, paths to str, NaN and ±inf to None.

    Non-finite floats become null so the file is strict JSON that any parser reads.
    """
    if isinstance(value, np.generic) or (hasattr(value, "item") and getattr(value, "ndim", None) == 0):
        value = value.item()
    elif isinstance(value, np.ndarray) or hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return [to_jsonable(v) for v in sorted(value, key=str)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if hasattr(value, "model_dump"):  # pydantic models such as the config
        return to_jsonable(value.model_dump(mode="json"))
    return str(value)


def _number(value: Any) -> float | None:
    """A metric value as a float, or None when it is missing or not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def format_value(name: str, value: float | None, digits: int = 4) -> str:
    """A metric value as text, like ``sbir.metrics.format_metrics``: counts as integers, acc_* with 2 decimals."""
    if value is None:
        return "–"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if name.startswith("n_"):
        return str(int(value))
    if name.startswith("acc_"):
        return f"{value:.2f}"
    return f"{value:.{digits}f}"


def _info_text(value: Any) -> str:
    """An info value as one line of text: scalars as they are, containers as compact JSON."""
    value = to_jsonable(value)
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


# --------------------------------------------------------------------------- metric table


def _known_descriptions(names: list[str]) -> dict[str, str]:
    """Descriptions in sbir.metrics.metric_infos order, for the cut and depths that appear in `names`."""
    from sbir.metrics import metric_infos  # lazy: sbir.metrics imports torch

    cuts = sorted({int(m.group(1)) for n in names if (m := re.fullmatch(r"(?:map_|rel_at_)(\d+)(?:_.*)?", n))})
    ks = sorted({int(m.group(1)) for n in names if (m := re.fullmatch(r"p_(\d+)(?:_minR)?", n))})
    acc_ks = sorted({int(m.group(1)) for n in names if (m := re.fullmatch(r"acc_(\d+)(?:_pooled|_in_class)?", n))})
    known: dict[str, str] = {}
    for cut in cuts or [200]:
        for info in metric_infos(cut, ks or (100, 200), acc_ks or None):
            known.setdefault(info.name, info.definition)
    for name, text in COUNT_DESCRIPTIONS.items():
        known.setdefault(name, text)
    return known


def metric_rows(metrics: Mapping[str, Mapping[str, Any]]) -> list[MetricRow]:
    """Rows of the metric table: names known to sbir.metrics first, in its order, then the rest in given order."""
    given = list(dict.fromkeys(name for run in metrics.values() for name in run))
    known = _known_descriptions(given)
    ordered = [n for n in known if n in given] + [n for n in given if n not in known]
    return [
        MetricRow(name, known.get(name, ""), tuple(_number(run.get(name)) for run in metrics.values()))
        for name in ordered
    ]


# --------------------------------------------------------------------------- images


def _relative_image(path: str | Path, out_dir: Path) -> str:
    """The image path relative to out_dir, with '/' separators; ValueError if it lies outside out_dir."""
    path = Path(path)
    candidates = ((Path(os.path.abspath(path)), Path(os.path.abspath(out_dir))), (path.resolve(), out_dir.resolve()))
    for image, root in candidates:
        if image.is_relative_to(root) and image != root:
            if not image.is_file():
                logger.warning("report image %s does not exist (yet); linking it anyway", path)
            return image.relative_to(root).as_posix()
    raise ValueError(f"report image {str(path)!r} is outside the report folder {str(out_dir)!r}; write it there first")


# --------------------------------------------------------------------------- Markdown

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>&|#])")


def _md(text: Any) -> str:
    """Plain text safe for Markdown: special characters backslash-escaped, line breaks flattened."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _md_code(text: str) -> str:
    """Text as a Markdown code span that is also safe inside a table cell."""
    text = " ".join(text.split()).replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _markdown(doc: dict[str, Any], rows: list[MetricRow], runs: list[str]) -> str:
    lines = [f"# {_md(doc['title'])}", "", f"Created {doc['created']}.", ""]
    for note in doc["notes"]:
        lines.append(f"> **Warning:** {_md(note)}")
        lines.append(">")
    if doc["notes"]:
        lines[-1] = ""
    lines += ["## Metrics", ""]
    if rows:
        lines.append("| metric | " + " | ".join(_md_code(r) for r in runs) + " | definition |")
        lines.append("|---|" + "---:|" * len(runs) + "---|")
        for row in rows:
            values = " | ".join(format_value(row.name, v) for v in row.values)
            lines.append(f"| {_md_code(row.name)} | {values} | {_md(row.description)} |")
    else:
        lines.append("No metrics.")
    lines.append("")
    if doc["info"]:
        lines += ["## Run information", "", "| key | value |", "|---|---|"]
        lines += [f"| {_md(k)} | {_md_code(_info_text(v))} |" for k, v in doc["info"].items()]
        lines.append("")
    if doc["images"]:
        lines += ["## Images", ""]
        for caption, rel in doc["images"].items():
            lines += [f"### {_md(caption)}", "", f"![{_md(caption)}]({quote(rel)})", ""]
    if doc["rows"]:
        lines += ["## Queries", ""]
        for row in doc["rows"]:
            lines += [f"### {_md(row['caption'])}", ""]
            lines += [" ".join(f"![{_md(cap)}]({quote(rel)})" for cap, rel in row["images"].items()), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 72em;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
.created { color: #666; margin-top: 0; }
.notes { border: 2px solid #c60; background: #fff4e5; padding: 0.6em 1em; margin: 1em 0; }
.notes p { margin: 0.3em 0; font-weight: 600; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; font-family: ui-monospace, monospace; }
td.def { color: #555; font-size: 0.9em; }
code { font-family: ui-monospace, monospace; font-size: 0.95em; word-break: break-word; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #444; margin-top: 0.3em; }
.row { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; margin: 0.5em 0 2em; }
.row figure { margin: 0; }
.row figure img { max-width: none; image-rendering: pixelated; }
"""


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html(doc: dict[str, Any], rows: list[MetricRow], runs: list[str]) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(doc['title'])}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{_esc(doc['title'])}</h1>",
        f'<p class="created">Created {_esc(doc["created"])}</p>',
    ]
    if doc["notes"]:
        out.append('<div class="notes">')
        out += [f"<p>Warning: {_esc(note)}</p>" for note in doc["notes"]]
        out.append("</div>")
    out.append("<h2>Metrics</h2>")
    if rows:
        out.append("<table>")
        head = "".join(f"<th>{_esc(r)}</th>" for r in runs)
        out.append(f"<thead><tr><th>metric</th>{head}<th>definition</th></tr></thead>")
        out.append("<tbody>")
        for row in rows:
            cells = "".join(f'<td class="num">{_esc(format_value(row.name, v))}</td>' for v in row.values)
            out.append(
                f'<tr><td><code>{_esc(row.name)}</code></td>{cells}<td class="def">{_esc(row.description)}</td></tr>'
            )
        out += ["</tbody>", "</table>"]
    else:
        out.append("<p>No metrics.</p>")
    if doc["info"]:
        out += ["<h2>Run information</h2>", "<table>", "<tbody>"]
        out += [
            f"<tr><th>{_esc(k)}</th><td><code>{_esc(_info_text(v))}</code></td></tr>" for k, v in doc["info"].items()
        ]
        out += ["</tbody>", "</table>"]
    if doc["images"]:
        out.append("<h2>Images</h2>")
        for caption, rel in doc["images"].items():
            src = _esc(quote(rel))
            out.append(
                f'<figure><a href="{src}"><img src="{src}" alt="{_esc(caption)}"></a>'
                f"<figcaption>{_esc(caption)}</figcaption></figure>"
            )
    if doc["rows"]:
        out.append("<h2>Queries</h2>")
        for row in doc["rows"]:
            out += [f"<h3>{_esc(row['caption'])}</h3>", '<div class="row">']
            for caption, rel in row["images"].items():
                src = _esc(quote(rel))
                out.append(
                    f'<figure><a href="{src}"><img src="{src}" alt="{_esc(caption)}"></a>'
                    f"<figcaption>{_esc(caption)}</figcaption></figure>"
                )
            out.append("</div>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- public API


def write_report(
    out_dir: str | Path,
    *,
    title: str,
    metrics: dict[str, dict[str, float]],
    info: dict[str, Any],
    images: dict[str, str | Path] | None = None,
    notes: list[str] | None = None,
    rows: list[ReportRow] | None = None,
) -> ReportFiles:
    """Write report.json, report.md and report.html to out_dir (created if needed) and return their paths.

    metrics: {"<model>/<mode>": {metric_name: value}}, rendered as one table: rows = metric names (in the order
    and with the descriptions of sbir.metrics.metric_infos where known; unknown names kept, in given order),
    columns = runs. info: free key/values (checkpoint, split, dataset, timings, config summary...) rendered as a
    definition table and stored in JSON. images: {"caption": path} of PNGs already written (PR plot, retrieval
    grid, explanations), linked by paths relative to out_dir; nothing is copied, and a path outside out_dir
    raises ValueError naming it (relative paths are taken from the current directory, like any path).
    notes: warning lines shown prominently (e.g. "selected on test classes"). rows: groups of pictures shown
    side by side (a query's results beside its explanations). Info entries whose value is None are left out.

    The HTML is one self-contained static page (inline CSS, no scripts, no external assets except the relative
    PNGs) and escapes all text. The JSON is {"title", "metrics", "info", "images": {caption: relpath}, "notes",
    "created"}; NumPy scalars become Python numbers and NaN / ±inf become null, so it is strict JSON.
    """
    out = Path(out_dir)
    image_links = {str(caption): _relative_image(path, out) for caption, path in (images or {}).items()}
    row_links = [
        {"caption": row.caption, "images": {str(c): _relative_image(p, out) for c, p in row.images.items()}}
        for row in rows or []
    ]
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "title": str(title),
        "metrics": to_jsonable({str(run): dict(values) for run, values in metrics.items()}),
        "info": to_jsonable({k: v for k, v in info.items() if v is not None}),
        "images": image_links,
        "rows": row_links,
        "notes": [str(n) for n in (notes or [])],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    rows = metric_rows(metrics)
    runs = [str(r) for r in metrics]
    files = ReportFiles(json=out / JSON_NAME, markdown=out / MARKDOWN_NAME, html=out / HTML_NAME)
    files.json.write_text(json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    files.markdown.write_text(_markdown(doc, rows, runs), encoding="utf-8")
    files.html.write_text(_html(doc, rows, runs), encoding="utf-8")
    logger.debug("wrote report %s (%d runs, %d metrics, %d images)", out, len(runs), len(rows), len(image_links))
    return files
