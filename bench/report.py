"""Shared helpers for benchmarks: machine description and section-wise updates of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
import resource
from pathlib import Path

HEADER = "# Benchmarks\n\nMeasured figures, one section per component.\n"


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    """One line naming the machine the figures were measured on."""
    return f"{os.cpu_count()} CPU cores ({cpu_name()}), no GPU, Python {platform.python_version()}"


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_section(path: Path, heading: str, body: str) -> None:
    """Replace (or append) the section titled ``heading`` of ``path``; other sections are kept verbatim."""
    text = path.read_text() if path.exists() else HEADER
    section = f"{heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(heading)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")
