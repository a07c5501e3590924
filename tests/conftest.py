"""Shared fixtures: tiny models and toy images (no downloads, no Ray)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture
def tiny_zse_cfg():
    from sbir.config import ZSEConfig

    return ZSEConfig(size="tiny")


@pytest.fixture
def tiny_zse(tiny_zse_cfg):
    from sbir.models.zse import ZSESBIR

    torch.manual_seed(0)
    return ZSESBIR(tiny_zse_cfg).eval()


@pytest.fixture
def toy_batch():
    """Normalised toy sketches/photos (64 px) for 4 classes x 3 instances, with labels."""
    from sbir.data.preprocess import zse_photo, zse_sketch
    from sbir.data.toy_shapes import make_toy_set

    pairs = make_toy_set(list(range(4)), 3, seed=1, size=64)
    sketches = torch.stack([zse_sketch(p.sketch, 64) for p in pairs])
    photos = torch.stack([zse_photo(p.photo, 64) for p in pairs])
    labels = torch.tensor([p.label for p in pairs])
    return sketches, photos, labels
