"""The inference layer, shared by validation, ``sbir eval``, ``sbir index build`` and serving.

``transforms`` (load-time image preprocessing), ``encoder`` (a model on its device, encoding image
batches), ``gallery`` (bi-encoder and relation galleries over the FAISS ``index``, saved as
self-describing directories) and ``evaluate`` (score matrices and every metric). See docs/architecture.md.
"""
