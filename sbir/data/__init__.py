"""Data formats and preprocessing (pure Python/PyTorch; Ray Data pipelines live in `pipelines/`)."""
