"""Shared fixtures: real data written out as image files, and one real training run reused by several tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("IMGTRAIN_OFFLINE", "1")  # tests never download; missing data must be a clear error
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).parent / "imgtrain"  # the console script pip installed, as a user runs it
IMGTRAIN = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "imgtrain.cli"]


def run_cli(
    *args: str, cwd: Path | None = None, check: bool = True, env: dict | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run `imgtrain ARGS` as a user would, in a fresh process."""
    proc = subprocess.run(
        [*IMGTRAIN, *map(str, args)],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"imgtrain {' '.join(map(str, args))} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        )
    return proc


def write_pngs(root: Path, x: np.ndarray, y: np.ndarray, class_names: list[str]) -> list[tuple[str, str]]:
    """Save uint8 images as PNG files in root/<class>/<i>.png; returns (relative path, class) rows."""
    from PIL import Image

    rows = []
    for i, (img, label) in enumerate(zip(x, y)):
        folder = root / class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:05d}.png"
        Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).save(path)
        rows.append((str(path.relative_to(root.parent)), class_names[label]))
    return rows


@pytest.fixture(scope="session")
def fashion():
    from imgtrain.data import load_dataset

    return load_dataset("fashion_mnist", val_split=0)


@pytest.fixture(scope="session")
def fashion_files(tmp_path_factory, fashion):
    """Real Fashion-MNIST as PNG files: folder/train/<class>/ (3000) and folder/test/<class>/ (1000), plus a CSV
    table of the same files with a split column. Class folder names avoid '/' ('T-shirt/top' -> 'T-shirt-top')."""
    import csv

    from imgtrain.data.split import stratified_subset

    base = tmp_path_factory.mktemp("fashion_png")
    names = [n.replace("/", "-") for n in fashion.class_names]
    tr = stratified_subset(fashion.train.y, 3000, seed=1)
    te = stratified_subset(fashion.test.y, 1000, seed=1)
    train_rows = write_pngs(base / "folder" / "train", fashion.train.x[tr], fashion.train.y[tr], names)
    test_rows = write_pngs(base / "folder" / "test", fashion.test.x[te], fashion.test.y[te], names)
    with open(base / "folder" / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "category", "split"])
        w.writerows([(p.removeprefix("folder/"), c, "train") for p, c in train_rows])
        w.writerows([(p.removeprefix("folder/"), c, "test") for p, c in test_rows])
    return {
        "folder": base / "folder",
        "csv": base / "folder" / "labels.csv",
        "class_names": names,
        "test_y": fashion.test.y[te],
        "test_x": fashion.test.x[te],
    }


@pytest.fixture(scope="session")
def mnist_pngs(tmp_path_factory):
    """The first 40 MNIST test digits as PNG files in folder/<digit>/<i>.png; returns (folder, their labels)."""
    from imgtrain.data import load_dataset

    ds = load_dataset("mnist", val_split=0, test_limit=40)
    folder = tmp_path_factory.mktemp("pngs")
    write_pngs(folder, ds.test.x, ds.test.y, [str(i) for i in range(10)])
    return folder, ds.test.y


@pytest.fixture(scope="session")
def mnist_run(tmp_path_factory):
    """`imgtrain train --dataset mnist --model cnn_small --epochs 1` run through the CLI, as the README shows."""
    out = tmp_path_factory.mktemp("runs") / "mnist-1"
    proc = run_cli("train", "--dataset", "mnist", "--model", "cnn_small", "--epochs", "1", "--lr", "3e-3", "--out", out)
    return out, proc


def _bf16_missing() -> str | None:
    from imgtrain.core.auto import BF16_CPU_FLAGS, bf16_capped, cpu_info

    flags = cpu_info()[1]
    if not BF16_CPU_FLAGS & flags:
        return "this CPU has no bfloat16 instructions (avx512_bf16 or amx_bf16)"
    return bf16_capped("tensorflow", flags)


# Tests of what bfloat16 runs do (exports, Grad-CAM, the bench's bfloat16 side): run on a CPU whose bfloat16 oneDNN
# may use; skipped, saying why, on one without (an AVX2 laptop) or under ONEDNN_MAX_CPU_ISA=AVX2 (CONTRIBUTING.md).
needs_bf16 = pytest.mark.skipif(_bf16_missing() is not None, reason=f"bfloat16: {_bf16_missing()}")


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium(profile: Path, width: int = 1280, height: int = 1000):
    """Headless Chromium (or Chrome) on PATH driven by Selenium through the chromedriver on PATH; `make test`
    installs Debian's. Without them the test is skipped, saying which is missing."""
    import shutil

    browser = next((path for path in map(shutil.which, BROWSERS) if path), None)
    driver = shutil.which("chromedriver")
    if browser is None:
        pytest.skip(f"no Chromium on PATH (looked for {', '.join(BROWSERS)}); `make test` installs Debian's chromium")
    if driver is None:
        pytest.skip("no chromedriver on PATH; `make test` installs Debian's chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=opts)


def free_port() -> int:
    """A localhost TCP port that nothing listens on (the kernel's choice)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(url: str, proc: subprocess.Popen, log, what: str, timeout_s: float = 180) -> None:
    """Polls GET `url` until it answers 200; a server process that exits first, or the timeout, fails the test with
    the end of its `log` (an open file the server writes to)."""
    import time

    import httpx

    deadline = time.time() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            log.seek(0)
            raise AssertionError(f"{what} did not start:\n{log.read()[-3000:]}")
        time.sleep(0.5)
