"""Built-in procedural sketch/photo dataset written in the Sketchy-Ext layout (`sbir data synth`).

`shapes` defines primitives and the category catalogue, `render` draws photos and sketches of an
instance, `writer` lays the files, split lists, pairs, strokes and manifest out on disk.
"""

from sbir.data.synth.shapes import Category, category_catalogue
from sbir.data.synth.writer import (
    GENERATOR_VERSION,
    MANIFEST_NAME,
    SynthSummary,
    read_synth_manifest,
    write_synthetic_dataset,
)

__all__ = [
    "GENERATOR_VERSION",
    "MANIFEST_NAME",
    "Category",
    "SynthSummary",
    "category_catalogue",
    "read_synth_manifest",
    "write_synthetic_dataset",
]
