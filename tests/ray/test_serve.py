"""The retrieval endpoint for real: Ray Serve on loopback, HTTP requests, a registered model and its gallery.

One ZSE-SBIR endpoint serves the module (the session's randomly initialised `served` model, shared with
the page tests: rankings, not accuracy, are under test). The tests that restart it or move the champion alias run last.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.ray.serving import Served, build_registered_gallery, free_port, register_random_checkpoint


def _args(served: Served, port: int, *extra: str) -> dict:
    overrides = [f"serve.port={port}", "serve.batch_wait_timeout_s=0.05", "serve.max_batch_size=8", *extra]
    overrides.append("serve.ingress.num_cpus=0.5")  # the session's 2-CPU cluster also runs Ray Data builds
    overrides.append(f"run.dir={served.runs_dir}")
    return {
        "config": served.preset,
        "model": served.reference,
        "tracking_uri": served.tracking_uri,
        "overrides": overrides,
    }


@pytest.fixture(scope="module")
def endpoint(served):
    from sbir.config import load_config
    from serve.launch import start_endpoint, stop_endpoint

    port = free_port()
    args = _args(served, port)
    config = load_config(served.preset, args["overrides"])
    live = start_endpoint(config, args)
    live_state = {"url": live.url, "port": port, "key": None, "args": args}
    yield live_state
    stop_endpoint()


def _test_files(served: Served, modality: str) -> list[Path]:
    return [
        Path(served.split.root) / r.path for r in served.split.records if r.role == "test" and r.modality == modality
    ]


def _post_sketch(url: str, data: bytes, key: str | None = None, **fields) -> httpx.Response:
    headers = {"X-API-Key": key} if key else {}
    files = {"sketch": ("s.png", data, "image/png")}
    return httpx.post(
        f"{url}/v1/search", files=files, data={k: str(v) for k, v in fields.items()}, headers=headers, timeout=60
    )


def _served_gallery(served: Served) -> Path:
    """The gallery folder the endpoint serves for the current champion (its run's artifact, cached)."""
    from pipelines.tracking import resolve_reference

    run_id = resolve_reference(served.reference, served.tracking_uri).run_id
    return served.runs_dir / "serve-cache" / run_id / "gallery"


def _offline(served: Served, sketch_paths: list[Path], mode: str, rerank_k: int):
    """What `sbir eval` scores: the saved gallery's score matrix for these sketches, via the inference layer."""
    import torch

    from sbir.inference.encoder import Encoder
    from sbir.inference.search import stable_topk

    gallery_dir = _served_gallery(served)
    encoder = Encoder.from_checkpoint(served.checkpoints[-1], device="cpu")
    gallery = encoder.open_gallery(gallery_dir)
    queries = encoder.encode_bytes([p.read_bytes() for p in sketch_paths], "sketch")
    scores = gallery.score_matrix(queries, mode, rerank_k=rerank_k)
    order = stable_topk(scores, scores.shape[1]).numpy()
    return gallery.ids[order], torch.gather(scores, 1, torch.from_numpy(order)).numpy()


@pytest.mark.parametrize("mode", ["ret", "rn_rerank"])
def test_search_ranks_like_the_offline_score_matrix(served, endpoint, mode):
    sketches = _test_files(served, "sketch")[:4]
    k, rerank_k = 10, 6
    ids, scores = _offline(served, sketches, mode, rerank_k)
    for row, path in enumerate(sketches):
        answer = _post_sketch(endpoint["url"], path.read_bytes(), k=k, mode=mode, rerank_k=rerank_k)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["mode"] == mode
        assert [hit["id"] for hit in body["results"]] == ids[row, :k].tolist()
        np.testing.assert_allclose([hit["score"] for hit in body["results"]], scores[row, :k], rtol=1e-4, atol=1e-4)
        assert set(body["timings"]) >= {"decode", "encode", "search", "rerank", "total"}
        assert (body["timings"]["rerank"] > 0) == (mode == "rn_rerank")
        assert all(hit["class"] in served.split.test_classes for hit in body["results"])


def test_strokes_are_rasterised_like_quickdraw_data(endpoint):
    from sbir.data.strokes import rasterize_drawing
    from serve.requests import STROKE_PEN, STROKE_SIZE

    strokes = [[[10, 120, 240, 10], [20, 200, 30, 20]], [[60, 180], [150, 150]]]
    as_json = httpx.post(f"{endpoint['url']}/v1/search", json={"strokes": strokes, "k": 5}, timeout=60)
    buffer = io.BytesIO()
    rasterize_drawing({"drawing": strokes}, size=STROKE_SIZE, pen_width=STROKE_PEN).convert("RGB").save(buffer, "PNG")
    as_image = _post_sketch(endpoint["url"], buffer.getvalue(), k=5)
    assert as_json.status_code == as_image.status_code == 200, as_json.text
    assert as_json.json()["input"] == "strokes"
    assert [h["id"] for h in as_json.json()["results"]] == [h["id"] for h in as_image.json()["results"]]


def _assert_same_answers(alone: list[dict], together: list[dict]) -> None:
    """Batched answers rank the same ids with the same scores as the unbatched ones."""
    for single, batched in zip(alone, together, strict=True):
        assert [h["id"] for h in single["results"]] == [h["id"] for h in batched["results"]]
        np.testing.assert_allclose(
            [h["score"] for h in single["results"]], [h["score"] for h in batched["results"]], atol=1e-5
        )


def test_batching_batches_and_changes_no_result(served, endpoint):
    sketches = _test_files(served, "sketch")[:8]
    alone = [_post_sketch(endpoint["url"], p.read_bytes(), k=8, mode="ret").json() for p in sketches]
    assert all(a["encoder_batch"] == 1 for a in alone)
    with ThreadPoolExecutor(16) as pool:
        together = list(
            pool.map(lambda p: _post_sketch(endpoint["url"], p.read_bytes(), k=8, mode="ret").json(), sketches * 2)
        )
    assert max(t["encoder_batch"] for t in together) > 1, "concurrent requests were never batched"
    _assert_same_answers(alone * 2, together)
    metrics = httpx.get(f"{endpoint['url']}/metrics", timeout=30).text
    assert "sbir_encoder_batch_size_bucket" in metrics


def test_rerank_pairs_of_concurrent_requests_pass_the_relation_head_together_and_rank_as_alone(served, endpoint):
    sketches = _test_files(served, "sketch")[:6]

    def search(path: Path) -> dict:
        answer = _post_sketch(endpoint["url"], path.read_bytes(), k=6, mode="rn_rerank", rerank_k=6)
        assert answer.status_code == 200, answer.text
        return answer.json()

    alone = [search(p) for p in sketches]
    assert all(a["rerank_batch"] == 1 for a in alone)
    with ThreadPoolExecutor(12) as pool:
        together = list(pool.map(search, sketches * 2))
    assert max(t["rerank_batch"] for t in together) > 1, "re-rank pairs of concurrent requests were never batched"
    _assert_same_answers(alone * 2, together)
    metrics = httpx.get(f"{endpoint['url']}/metrics", timeout=30).text
    assert "sbir_rerank_batch_queries_bucket" in metrics


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, "PNG")
    return buffer.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _malformed(url: str, sketch: bytes) -> list[tuple[str, httpx.Request]]:
    """(what, request) pairs that must each get a 4xx."""
    search = f"{url}/v1/search"
    png = _png(64, 64)
    b64 = base64.b64encode(png).decode()
    jpeg = io.BytesIO()
    Image.new("RGB", (32, 32)).save(jpeg, "JPEG")
    gif = io.BytesIO()
    Image.new("RGB", (32, 32)).save(gif, "GIF")

    def multipart(data: bytes, **fields) -> httpx.Request:
        return httpx.Request(
            "POST", search, files={"sketch": ("s.png", data, "image/png")}, data={k: str(v) for k, v in fields.items()}
        )

    def js(payload) -> httpx.Request:
        return httpx.Request(
            "POST", search, content=json.dumps(payload).encode(), headers={"content-type": "application/json"}
        )

    cases = [
        ("truncated png", multipart(png[: len(png) // 2])),
        ("corrupt png", multipart(png[:20] + b"\x00" * 200)),
        ("truncated jpeg", multipart(jpeg.getvalue()[:100])),
        ("not an image", multipart(b"hello world, not an image")),
        ("empty file", multipart(b"")),
        ("gif is not accepted", multipart(gif.getvalue())),
        ("decompression bomb", multipart(_bomb_png(100_000, 100_000))),
        ("huge image", multipart(_bomb_png(5000, 5000))),
        ("zero-size image header", multipart(_bomb_png(0, 0))),
        ("k = 0", multipart(sketch, k=0)),
        ("k < 0", multipart(sketch, k=-3)),
        ("k huge", multipart(sketch, k=10**9)),
        ("k not a number", multipart(sketch, k="ten")),
        ("k a float", multipart(sketch, k="2.5")),
        ("unknown mode", multipart(sketch, mode="magic")),
        ("exhaustive rn is not served", multipart(sketch, mode="rn")),
        ("a 1 x 1 sketch", multipart(_png(1, 1))),
        ("a 2000 x 40 sketch", multipart(_png(2000, 40))),
        ("an unknown query parameter", httpx.Request("POST", f"{search}?top=3", files={"sketch": ("s.png", sketch)})),
        (
            "k in the query string and the form",
            httpx.Request("POST", f"{search}?k=3", files={"sketch": ("s.png", sketch)}, data={"k": "4"}),
        ),
        ("rerank_k = 0", multipart(sketch, mode="rn_rerank", rerank_k=0)),
        ("unknown field", multipart(sketch, colour="red")),
        ("no sketch field", httpx.Request("POST", search, files={"other": ("s.png", sketch, "image/png")})),
        (
            "two sketches",
            httpx.Request("POST", search, files=[("sketch", ("a.png", sketch)), ("sketch", ("b.png", sketch))]),
        ),
        (
            "broken multipart",
            httpx.Request(
                "POST", search, content=b"--xx\r\nbroken", headers={"content-type": "multipart/form-data; boundary=xx"}
            ),
        ),
        ("text/plain body", httpx.Request("POST", search, content=b"hi", headers={"content-type": "text/plain"})),
        ("no content type", httpx.Request("POST", search, content=b"hi")),
        ("xml body", httpx.Request("POST", search, content=b"<a/>", headers={"content-type": "application/xml"})),
        (
            "invalid json",
            httpx.Request("POST", search, content=b"{not json", headers={"content-type": "application/json"}),
        ),
        ("json array", js([1, 2, 3])),
        ("json without sketch", js({"k": 3})),
        ("json with image and strokes", js({"image": b64, "strokes": [[[1, 2], [3, 4]]]})),
        ("image not base64", js({"image": "***not base64***"})),
        ("image is a number", js({"image": 12})),
        ("base64 of text", js({"image": base64.b64encode(b"plain text").decode()})),
        ("strokes not a list", js({"strokes": "a line"})),
        ("strokes empty", js({"strokes": []})),
        ("stroke with one axis", js({"strokes": [[[1, 2, 3]]]})),
        ("stroke with mismatched axes", js({"strokes": [[[1, 2, 3], [4, 5]]]})),
        ("stroke coordinates not numbers", js({"strokes": [[["a", "b"], ["c", "d"]]]})),
        ("too many strokes", js({"strokes": [[[1, 2], [3, 4]]] * 600})),
        ("too many points", js({"strokes": [[list(range(30_000)), list(range(30_000))]]})),
        ("json k a string", js({"image": b64, "k": "many"})),
        ("json k a bool", js({"image": b64, "k": True})),
        ("body over the upload limit", multipart(b"\x89PNG" + b"\x00" * (11 * 1024**2))),
        ("json null", js(None)),
        ("image of unknown id", httpx.Request("GET", f"{url}/v1/gallery/999999/image")),
        ("path traversal id", httpx.Request("GET", f"{url}/v1/gallery/..%2F..%2Fetc%2Fpasswd/image")),
        ("negative id", httpx.Request("GET", f"{url}/v1/gallery/-1/image")),
        ("id with a dot", httpx.Request("GET", f"{url}/v1/gallery/1.png/image")),
        ("delete unknown id", httpx.Request("DELETE", f"{url}/v1/gallery/999999")),
        ("delete traversal id", httpx.Request("DELETE", f"{url}/v1/gallery/..%2Fgallery.json")),
        ("add without photos", httpx.Request("POST", f"{url}/v1/gallery", files={"other": ("x.png", png)})),
        ("add a corrupt photo", httpx.Request("POST", f"{url}/v1/gallery", files={"photo": ("x.png", png[:30])})),
        (
            "explain unknown id",
            httpx.Request("POST", f"{url}/v1/explain", files={"sketch": ("s.png", sketch)}, data={"id": "999999"}),
        ),
        ("explain without id", httpx.Request("POST", f"{url}/v1/explain", files={"sketch": ("s.png", sketch)})),
        ("unknown route", httpx.Request("GET", f"{url}/v1/nothing-here")),
        ("wrong method", httpx.Request("GET", search)),
    ]
    return cases


def test_malformed_requests_get_a_4xx_with_a_message_and_the_service_stays_ready(served, endpoint):
    sketch = _test_files(served, "sketch")[0].read_bytes()
    cases = _malformed(endpoint["url"], sketch)
    assert len(cases) >= 40
    with httpx.Client(timeout=60) as client:
        for what, request in cases:
            response = client.send(request)
            assert 400 <= response.status_code < 500, f"{what}: {response.status_code} {response.text[:200]}"
            body = response.json()
            message = body.get("error") or body.get("detail")
            assert message, f"{what}: no message in {body}"
        assert client.get(f"{endpoint['url']}/readyz").status_code == 200
        assert _post_sketch(endpoint["url"], sketch, k=3).status_code == 200
        by_query = client.post(f"{endpoint['url']}/v1/search?k=3", files={"sketch": ("s.png", sketch)})
        assert by_query.status_code == 200 and len(by_query.json()["results"]) == 3  # options in the query string


def test_sixteen_concurrent_clients_get_no_error(served, endpoint):
    sketches = [p.read_bytes() for p in _test_files(served, "sketch")]
    latencies: list[float] = []

    def client(n: int) -> list[int]:
        codes = []
        with httpx.Client(timeout=120) as http:
            for i in range(4):
                started = time.perf_counter()
                response = http.post(
                    f"{endpoint['url']}/v1/search",
                    files={"sketch": ("s.png", sketches[(n + i) % len(sketches)])},
                    data={"k": "5"},
                )
                latencies.append(time.perf_counter() - started)
                codes.append(response.status_code)
        return codes

    with ThreadPoolExecutor(16) as pool:
        codes = [c for batch in pool.map(client, range(16)) for c in batch]
    assert codes == [200] * 64
    p50, p99 = np.percentile(latencies, [50, 99])
    print(f"16 clients x 4 searches: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")


def test_info_image_explain_and_openapi(served, endpoint):
    url = endpoint["url"]
    info = httpx.get(f"{url}/v1/info", timeout=30).json()
    assert info["method"] == "zse" and info["version"] == "1" and info["modes"] == ["ret", "rn_rerank"]
    assert info["gallery_size"] == len(_test_files(served, "photo")) and info["index_kind"] == "flat"
    hit = _post_sketch(url, _test_files(served, "sketch")[0].read_bytes(), k=1).json()["results"][0]
    image = httpx.get(f"{url}{hit['image_url']}", timeout=30)
    assert image.status_code == 200 and image.headers["content-type"].startswith("image/")
    Image.open(io.BytesIO(image.content)).verify()
    explained = httpx.post(
        f"{url}/v1/explain",
        files={"sketch": ("s.png", _test_files(served, "sketch")[0].read_bytes())},
        data={"id": str(hit["id"]), "arrays": "true"},
        timeout=60,
    ).json()
    assert set(explained["png"]) == {"sketch_attention", "photo_attention", "correspondences", "synthesis"}
    for data in explained["png"].values():
        Image.open(io.BytesIO(base64.b64decode(data))).verify()
    assert len(explained["arrays"]["correspondence"]) > 0
    schema = httpx.get(f"{url}/openapi.json", timeout=30).json()
    assert {"/v1/search", "/v1/gallery", "/v1/explain", "/v1/info", "/readyz"} <= set(schema["paths"])


def test_sbir_query_prints_the_top_k_of_an_image_and_of_strokes(served, endpoint, tmp_path):
    from typer.testing import CliRunner

    from sbir.cli import app

    sketch = _test_files(served, "sketch")[0]
    result = CliRunner().invoke(app, ["query", str(sketch), "--url", endpoint["url"], "-k", "3", "--mode", "ret"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert "mode ret" in lines[0] and len(lines) == 4 and lines[1].split()[0] == "1"
    strokes = tmp_path / "drawing.ndjson"
    strokes.write_text(json.dumps({"word": "x", "drawing": [[[0, 50, 200], [0, 120, 40]]]}) + "\n")
    result = CliRunner().invoke(app, ["query", str(strokes), "--url", endpoint["url"], "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)) == 2
    result = CliRunner().invoke(app, ["query", str(sketch), "--url", endpoint["url"], "-k", "0"])
    assert result.exit_code == 1 and "'k' must be between 1 and" in result.output


def test_index_build_from_a_plain_folder_of_images(served, tmp_path, capfd):
    """A plain folder of images becomes a gallery; a healthy build prints no error-level line of Ray's."""
    from typer.testing import CliRunner

    from sbir.cli import app
    from sbir.inference.saved_gallery import find_image, read_gallery_meta

    folder = tmp_path / "my photos"
    (folder / "holiday").mkdir(parents=True)
    for i, photo in enumerate(_test_files(served, "photo")[:5]):
        (folder / ("holiday" if i % 2 else "") / f"p{i}.jpg").write_bytes(photo.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "gallery"
    args = ["index", "build", "--checkpoint", str(served.checkpoints[0]), "--images", str(folder), "--out", str(out)]
    capfd.readouterr()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "5 photos" in result.output and "images/s" in result.output
    stderr = capfd.readouterr().err  # Ray's core worker writes to this process's own fd 2
    assert "core_worker" not in stderr and "max_restarts" not in stderr, stderr[-2000:]
    meta = read_gallery_meta(out)
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert meta.count == 5 and meta.kind == "relation"
    assert sorted(i["path"] for i in items) == ["holiday/p1.jpg", "holiday/p3.jpg", "p0.jpg", "p2.jpg", "p4.jpg"]
    assert all(i["class_name"] is None for i in items) and find_image(out, items[0]["id"]) is not None
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "--overwrite" in again.output


def _all_ids(url: str, sketch: bytes, key: str | None = None) -> list[int]:
    answer = _post_sketch(url, sketch, key, k=200, mode="ret")
    assert answer.status_code == 200, answer.text
    return [hit["id"] for hit in answer.json()["results"]]


def test_added_and_deleted_photos_survive_a_restart_and_the_api_key_is_enforced(served, endpoint):
    from sbir.config import load_config
    from serve.launch import start_endpoint, stop_endpoint

    url = endpoint["url"]
    sketch = _test_files(served, "sketch")[0].read_bytes()
    before = _all_ids(url, sketch)
    photo = _test_files(served, "photo")[0]
    added = httpx.post(
        f"{url}/v1/gallery", files={"photo": ("mine.png", photo.read_bytes())}, data={"class": "mine"}, timeout=60
    )
    assert added.status_code == 201, added.text
    new_id = added.json()["added"][0]["id"]
    assert new_id not in before and new_id in _all_ids(url, sketch)
    assert httpx.delete(f"{url}/v1/gallery/{before[0]}", timeout=30).status_code == 200
    after = _all_ids(url, sketch)
    assert before[0] not in after and new_id in after

    stop_endpoint()
    key = "s3cret-key"
    args = _args(served, endpoint["port"], f"serve.api_key={key}")
    start_endpoint(load_config(served.preset, args["overrides"]), args)
    endpoint.update(key=key, args=args)
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert httpx.get(f"{url}/readyz").status_code == 200
    for method, path in (
        ("GET", "/v1/info"),
        ("GET", "/metrics"),
        ("POST", "/v1/admin/reload"),
        ("GET", f"/v1/gallery/{new_id}/image"),
        ("DELETE", f"/v1/gallery/{new_id}"),
    ):
        assert httpx.request(method, f"{url}{path}", timeout=30).status_code == 401, path
        assert httpx.request(method, f"{url}{path}", headers={"X-API-Key": "wrong"}, timeout=30).status_code == 401
    assert _post_sketch(url, sketch, k=3).status_code == 401
    assert httpx.get(f"{url}/v1/info", headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code == 200
    restarted = _all_ids(url, sketch, key)
    assert new_id in restarted and before[0] not in restarted
    assert httpx.get(f"{url}/v1/gallery/{new_id}/image", headers={"X-API-Key": key}, timeout=30).status_code == 200


def test_moving_the_champion_alias_swaps_the_model_without_failing_a_request(served, endpoint):
    url, key = endpoint["url"], endpoint["key"]
    headers = {"X-API-Key": key} if key else {}
    register_random_checkpoint(served, seed=1, metric=0.9)  # better: the champion alias moves to v2
    build_registered_gallery(served, served.reference)
    sketch = _test_files(served, "sketch")[1].read_bytes()
    stop = threading.Event()
    answers: list[tuple[int, str]] = []

    def hammer() -> None:
        with httpx.Client(timeout=120, headers=headers) as http:
            while not stop.is_set():
                r = http.post(f"{url}/v1/search", files={"sketch": ("s.png", sketch)}, data={"k": "3"})
                answers.append((r.status_code, r.json().get("model_id", r.text)))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        swap = httpx.post(f"{url}/v1/admin/reload", headers=headers, timeout=300)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert swap.status_code == 200, swap.text
    assert swap.json()["changed"] and swap.json()["model_id"].endswith("#2")
    assert answers and all(code == 200 for code, _ in answers), [a for a in answers if a[0] != 200][:3]
    assert answers[0][1].endswith("#1") and answers[-1][1].endswith("#2")
    info = httpx.get(f"{url}/v1/info", headers=headers, timeout=30).json()
    assert info["version"] == "2" and info["swaps"] == 1
    again = httpx.post(f"{url}/v1/admin/reload", headers=headers, timeout=60).json()
    assert again["changed"] is False


def test_with_load_before_ready_a_started_app_answers_at_once_and_one_that_cannot_load_fails(
    served, endpoint, tmp_path
):
    """What a RayService upgrade relies on: Serve reports the app RUNNING only with its model loaded, and a model
    that cannot load fails the deployment instead of starting an endpoint that answers 503."""
    from ray import serve

    from serve.app import build_app
    from serve.config_file import APP_NAME
    from serve.launch import stop_endpoint

    stop_endpoint()
    # One start per deployment: a checkpoint that is not there fails every retry alike.
    once = "serve.ingress.max_constructor_retry_count=1"
    args = _args(served, endpoint["port"], "serve.load_before_ready=true", once)
    serve.run(build_app(args), name=APP_NAME, route_prefix="/", blocking=False)  # returns once RUNNING
    ready = httpx.get(f"{endpoint['url']}/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
    stop_endpoint()
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(Exception, match=f"Deploying application {APP_NAME} failed"):
        serve.run(build_app(dict(args, model=str(missing))), name=APP_NAME, route_prefix="/", blocking=False)
    ingress = serve.status().applications[APP_NAME].deployments["Ingress"]
    assert "no-such-checkpoint" in ingress.message, ingress.message  # what `serve status` shows the operator
    stop_endpoint()
