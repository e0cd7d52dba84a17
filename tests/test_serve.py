"""The server as a user meets it: real uvicorn on a localhost port, real HTTP, real Chromium."""
import io
import os
import socket
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import IMGTRAIN, ROOT, chromium, run_cli, write_pngs

LIMITS = ["--max-upload-mb", "0.05", "--max-files", "4", "--max-pixels", "1000000"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(mnist_run):
    out, _ = mnist_run
    port = _free_port()
    proc = subprocess.Popen([*IMGTRAIN, "serve", str(out), "--port", str(port), *LIMITS], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"server did not start:\n{proc.stdout.read()}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from imgtrain import load_dataset

    ds = load_dataset("mnist", val_split=0, test_limit=20)
    folder = tmp_path_factory.mktemp("digits")
    write_pngs(folder, ds.test.x, ds.test.y, [str(i) for i in range(10)])
    return sorted(folder.rglob("*.png"))


def _png(size=(28, 28), mode="L", noise=False) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, size[::-1], dtype=np.uint8)) if noise else \
        Image.new(mode, size, 0)
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_predictions_match_the_cli(server, digits, mnist_run):
    import json

    out, _ = mnist_run
    cli = {os.path.basename(r["file"]): r["top"][0]["class"] for r in
           json.loads(run_cli("predict", out, *digits, "--format", "json").stdout)}
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in digits[:4]]
    r = httpx.post(f"{server}/predict", files=files, timeout=30)
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert [p["file"] for p in preds] == [p.name for p in digits[:4]]
    for p in preds:
        assert p["top"][0]["class"] == cli[p["file"]] and len(p["top"]) == 3
    for path in digits[4:]:
        top = httpx.post(f"{server}/predict", files={"files": (path.name, path.read_bytes())}).json()
        assert top["predictions"][0]["top"][0]["class"] == cli[path.name]


def test_model_health_page_and_docs(server):
    info = httpx.get(f"{server}/model").json()
    assert info["class_names"] == [str(i) for i in range(10)] and info["input_shape"] == [28, 28, 1]
    assert info["metrics"]["test_accuracy"] >= 0.985
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    assert 'id="file"' in httpx.get(f"{server}/").text
    assert httpx.get(f"{server}/docs").status_code == 200
    assert "/predict" in httpx.get(f"{server}/openapi.json").json()["paths"]


@pytest.mark.parametrize("name, files, status, words", [
    ("text", [("files", ("a.png", b"this is not an image", "image/png"))], 415, "not an image"),
    ("truncated", [("files", ("t.png", _png((28, 28), noise=True)[:400], "image/png"))], 415, "t.png: cannot decode"),
    ("oversized", [("files", ("big.png", os.urandom(80_000), "image/png"))], 413, "over the limit of 0.05 MiB"),
    ("too many", [("files", (f"{i}.png", _png(), "image/png")) for i in range(5)], 400, "Too many files"),
    ("bomb", [("files", ("bomb.png", _png((2000, 2000), "1"), "image/png"))], 413, "2000x2000 pixels"),
    ("none", [], 400, "no files"),
])
def test_bad_uploads_get_json_errors_and_the_server_goes_on(server, name, files, status, words):
    r = httpx.post(f"{server}/predict", files=files or None, data=None if files else {"x": "1"}, timeout=30)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    ok = httpx.post(f"{server}/predict", files={"files": ("ok.png", _png())}, timeout=30)
    assert ok.status_code == 200


def test_bounded_load_with_hostile_uploads(server, digits):
    """2,000 requests, 16 at a time, on localhost; every 25th is not an image. Prints rate and latencies."""
    good = [p.read_bytes() for p in digits]
    n, concurrency = 2000, 16

    def one(i):
        hostile = i % 25 == 0
        body = b"not an image at all" if hostile else good[i % len(good)]
        t0 = time.perf_counter()
        r = client.post(f"{server}/predict", files={"files": (f"{i}.png", body, "image/png")})
        return hostile, r.status_code, time.perf_counter() - t0

    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, range(n)))
        wall = time.perf_counter() - t0
    wrong = [(i, s) for i, (hostile, s, _) in enumerate(results) if s != (415 if hostile else 200)]
    assert not wrong, wrong[:10]
    lat = sorted(dt for _, _, dt in results)
    p50, p95 = statistics.median(lat) * 1e3, lat[int(0.95 * len(lat))] * 1e3
    health = httpx.get(f"{server}/health").json()
    print(f"\nload: {n} requests, {concurrency} concurrent: {n / wall:.0f} req/s, p50 {p50:.1f} ms, p95 {p95:.1f} ms, "
          f"{health['requests']} predictions in {health['model_calls']} model calls")
    assert health["model_calls"] < health["requests"], "concurrent requests were batched"


def test_upload_page_in_headless_chromium(server, digits, mnist_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    path = digits[0]
    expected = httpx.post(f"{server}/predict", files={"files": (path.name, path.read_bytes())}).json()
    expected = expected["predictions"][0]["top"][0]["class"]
    driver = chromium(tmp_path / "profile", 900, 900)
    try:
        driver.get(server + "/")
        driver.find_element(By.ID, "file").send_keys(str(path))
        top1 = WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "top1"))[0]
        assert top1.text == expected
        assert len(driver.find_elements(By.CSS_SELECTOR, "#result .bar")) == 3
        assert driver.execute_script("return document.getElementById('preview').naturalWidth") == 28
        driver.save_screenshot(str(tmp_path / "page.png"))
    finally:
        driver.quit()
