"""The endpoint's parts that need no Ray: request checks, the journal, the Serve config file, the builder args."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import yaml
from PIL import Image

from sbir.config import ServeConfig, load_config
from sbir.errors import SbirError


def _png(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), "white").save(buffer, "PNG")
    return buffer.getvalue()


def test_decode_image_accepts_png_jpeg_webp_and_names_every_refusal():
    from serve.requests import RequestError, decode_image

    limits = ServeConfig(max_image_pixels=100 * 100)
    assert decode_image(_png(20, 10, "L"), limits).shape == (10, 20, 3)
    for fmt in ("JPEG", "WEBP"):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, fmt)
        assert decode_image(buffer.getvalue(), limits).dtype == np.uint8
    cases = {
        b"": (400, "empty"),
        b"not an image": (415, "PNG, JPEG or WebP"),
        _png(20, 20)[:40]: (400, "cannot be decoded"),
        _png(101, 100): (413, "above the limit"),
    }
    gif = io.BytesIO()
    Image.new("RGB", (4, 4)).save(gif, "GIF")
    cases[gif.getvalue()] = (415, "GIF")
    for data, (status, words) in cases.items():
        with pytest.raises(RequestError, match=words) as caught:
            decode_image(data, limits)
        assert caught.value.status == status


def test_base64_strokes_and_numbers_are_checked():
    from serve.requests import RequestError, decode_base64_image, gallery_id, parse_int, rasterize_strokes

    limits = ServeConfig(max_strokes=2, max_points=10)
    png = _png(8, 8)
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    assert decode_base64_image(data_url, limits).shape == (8, 8, 3)
    assert rasterize_strokes([[[0, 10, 20], [0, 20, 5]]], limits).shape == (224, 224, 3)
    assert rasterize_strokes({"drawing": [[[0, 10], [0, 20], [0, 5]]]}, limits).shape == (224, 224, 3)
    for bad, status in (([[[0] * 6, [0] * 6]] * 2, 413), ([[[1, 2]]] * 3, 413), ("x", 400), ([], 400)):
        with pytest.raises(RequestError) as caught:
            rasterize_strokes(bad, limits)
        assert caught.value.status == status
    with pytest.raises(RequestError, match="base64"):
        decode_base64_image("@@@", limits)
    assert parse_int("7", "k", 1, 10) == 7
    for bad in ("0", "11", "2.5", True, "x"):
        with pytest.raises(RequestError, match="'k'"):
            parse_int(bad, "k", 1, 10)
    assert gallery_id("42") == 42
    for bad in ("-1", "../x", "1.png", "9" * 30, ""):
        with pytest.raises(RequestError, match="non-negative integer"):
            gallery_id(bad)


def _saved_gallery(tmp_path, count: int = 3):
    import torch

    from sbir.inference.gallery import Gallery, GalleryItem
    from sbir.inference.saved_gallery import Provenance, save_gallery
    from sbir.models.encoding import EmbeddingEncoding

    model = torch.nn.Linear(1, 1)
    photos = EmbeddingEncoding(torch.nn.functional.normalize(torch.randn(count, 4), dim=1))
    items = [GalleryItem(i, f"p{i}.png", "cat", 0) for i in range(count)]
    save_gallery(Gallery(model, photos, items), tmp_path, Provenance("clip_at", "ref", "0" * 64))
    return tmp_path


def test_the_journal_orders_entries_never_reuses_ids_and_is_shared_by_readers(tmp_path):
    from sbir.inference.saved_gallery import Journal

    root = _saved_gallery(tmp_path)
    writer, reader = Journal(root), Journal(root)
    arrays = {"embedding": np.ones((2, 4), np.float32)}
    added = writer.add([("a.png", "dog", _png(4, 4)), ("b.png", None, _png(4, 4))], arrays)
    assert [item.id for item in added] == [3, 4] and added[0].class_name == "dog"
    writer.remove([4])
    again = reader.add([("c.png", None, _png(4, 4))], {"embedding": np.ones((1, 4), np.float32)})
    assert again[0].id == 5  # 4 was removed but is never given out again
    entries = Journal(root).entries()
    assert [(e.seq, e.op) for e in entries] == [(1, "add"), (2, "remove"), (3, "add")]
    assert entries[1].ids == (4,) and Journal(root).entries(after=2)[0].items[0].id == 5
    assert (root / "images" / "3.png").is_file()


def test_the_shipped_serve_config_is_what_the_generator_writes_and_ray_accepts():
    from ray.serve.schema import ServeDeploySchema

    from serve.config_file import SHIPPED, SHIPPED_ARGS, render, serve_config

    document = serve_config(load_config(None, []), SHIPPED_ARGS)
    assert SHIPPED.read_text() == render(document), "regenerate: sbir serve --write-config serve/config.yaml …"
    parsed = ServeDeploySchema.model_validate(yaml.safe_load(SHIPPED.read_text()))
    application = parsed.applications[0]
    assert application.import_path == "serve.app:build_app" and application.args == SHIPPED_ARGS
    names = [d.name for d in application.deployments]
    assert names == ["Ingress"]  # the encoder and the gallery live in the ingress until the gallery is sharded
    assert parsed.http_options.host == "127.0.0.1"


def test_deployment_options_come_from_the_config():
    from ray.serve.schema import ServeDeploySchema

    from serve.config_file import serve_config

    config = load_config(
        None,
        [
            "serve.ingress.num_gpus=0.5",
            "serve.ingress.autoscaling.min_replicas=1",
            "serve.ingress.autoscaling.max_replicas=4",
            "serve.gallery.shards=2",
            "serve.gallery.shard.num_replicas=3",
            "serve.gallery.shard_resources=[{node_a: 0.5}, {node_b: 0.5}]",
            "serve.ingress.max_constructor_retry_count=1",
            "serve.port=9000",
        ],
    )
    document = serve_config(config, {"model": "m"}, working_dir="s3://bucket/sbir.zip")
    ServeDeploySchema.model_validate(document)
    deployments = {d["name"]: d for d in document["applications"][0]["deployments"]}
    assert deployments["Ingress"]["max_constructor_retry_count"] == 1
    assert "max_constructor_retry_count" not in deployments["GalleryShard0"], "unset: Ray Serve's default"
    assert deployments["Ingress"]["ray_actor_options"]["num_gpus"] == 0.5
    assert deployments["Ingress"]["autoscaling_config"]["max_replicas"] == 4
    assert "num_replicas" not in deployments["Ingress"]
    assert list(deployments) == ["Ingress", "GalleryShard0", "GalleryShard1"]
    assert deployments["GalleryShard0"]["num_replicas"] == deployments["GalleryShard1"]["num_replicas"] == 3
    assert deployments["GalleryShard1"]["ray_actor_options"]["resources"] == {"node_b": 0.5}
    assert document["http_options"]["port"] == 9000
    assert document["applications"][0]["runtime_env"]["working_dir"] == "s3://bucket/sbir.zip"
    with pytest.raises(SbirError, match="remote URIs"):
        serve_config(config, {"model": "m"}, working_dir=".")  # Ray accepts only URIs here


def test_bad_builder_args_and_serve_keys_are_refused_by_name():
    from serve.settings import settings_from_args

    with pytest.raises(SbirError, match="modle"):
        settings_from_args({"modle": "x"})
    with pytest.raises(SbirError, match="no model"):
        settings_from_args({})
    with pytest.raises(SbirError, match="max_replicas"):
        load_config(None, ["serve.ingress.autoscaling.min_replicas=3", "serve.ingress.autoscaling.max_replicas=2"])
    with pytest.raises(SbirError, match="max_k"):
        load_config(None, ["serve.top_k=500"])
    settings, _ = settings_from_args({"model": "models:/m@champion", "overrides": "serve.api_key=k,serve.top_k=5"})
    assert settings.api_key == "k" and settings.serve.top_k == 5 and settings.gallery is None


def test_a_plain_gallery_path_still_configures_the_gallery_and_threads_follow_the_cpus():
    config = load_config(None, ["serve.gallery=/galleries/zse", "serve.ingress.num_cpus=1.5"])
    assert config.serve.gallery.path == "/galleries/zse" and config.serve.gallery.shards == 1
    assert config.serve.ingress.compute_threads == 2  # 1.5 CPUs: two threads, not Ray's one
    assert load_config(None, ["serve.ingress.num_cpus=0.25"]).serve.ingress.compute_threads == 1
    assert load_config(None, ["serve.ingress.threads=4"]).serve.ingress.compute_threads == 4
    with pytest.raises(SbirError, match="shards"):
        load_config(None, ["serve.gallery.shards=0"])


def test_search_options_in_the_query_string_are_used_and_anything_else_there_is_refused():
    from serve.requests import RequestError, search_query, with_query_options

    limits = ServeConfig()
    sketch = np.zeros((32, 32, 3), np.uint8)
    fields = with_query_options({}, [("k", "3"), ("mode", "ret")])
    query = search_query(fields, sketch, "image", limits, ("ret", "rn_rerank"))
    assert (query.k, query.mode) == (3, "ret")
    for params, body, words in (
        ([("top", "3")], {}, "unknown query parameter 'top'"),
        ([("k", "3")], {"k": "4"}, "'k' is given twice"),
        ([("k", "3"), ("k", "4")], {}, "'k' is given twice"),
    ):
        with pytest.raises(RequestError, match=words) as caught:
            with_query_options(body, params)
        assert caught.value.status == 400


@pytest.mark.parametrize(("width", "height", "words"), [(1, 1, "at least 16"), (20000, 4, "at least 16"),
                                                       (400, 40, "at most 8 times"), (16, 16, None)])  # fmt: skip
def test_degenerate_sketches_are_refused_naming_the_limit(width, height, words):
    from serve.requests import RequestError, search_query

    sketch = np.zeros((height, width, 3), np.uint8)
    if words is None:
        assert search_query({}, sketch, "image", ServeConfig(), ("ret",)).sketch.shape == (16, 16, 3)
        return
    with pytest.raises(RequestError, match=words) as caught:
        search_query({}, sketch, "image", ServeConfig(), ("ret",))
    assert caught.value.status == 400
